"""One training step per parameter-efficient tuning method: t5pt vs HF transformers + PEFT.

Usage (from the repository root, inside the project's virtualenv; the peer as for
bench/train_step.py):

    python bench/peft_methods.py [--steps 5] [--dtype float32|bfloat16]
        [--frameworks jax,torch] [--methods prompt,lora,prompt+lora,deep-prompt,ia3,...]
        [--model small|base|large|xl] [--batch 8]

Shapes, batch and timing are bench/train_step.py's (imported from it): T5 1.1 / Flan-T5
of --model (default small), --batch examples (default 8), 128 input tokens, 32 target
tokens, random ids, dropout 0, untied logits. tokens/s counts real tokens only:
batch * (128 + 32) per step.

Methods (t5pt: T5Config fields and optimizer as in gin/*.gin; what trains follows):
  prompt       prompt_length=100, 'encoder/prompt/prompt', Adafactor (lr 0.3)
  lora         DEFAULT_LORA_RULES (r 8, alpha 16, attention query and value),
               '.*/lora_[ab]', AdamW (clip 1.0)
  prompt+lora  both, optimizers.by_parameter: Adafactor for the prompt, AdamW for LoRA
  deep-prompt  prefix_length=32 (encoder self-attention keys/values), '.*/prefix_(key|value)',
               AdamW (peak lr 5e-3, clip 1.0)
  ia3          DEFAULT_IA3_PATTERN (attention key/value, mlp wo), '.*/ia3_scale',
               Adafactor (lr 3e-3)
  prompt-bf16  prompt, frozen tree held in bfloat16
  prompt-int8  prompt, T5Config(int8_kernels=True): every dense kernel int8 + float32
               kernel_scale (quantization.quantize of a float init), other frozen leaves
               bfloat16, as quantization.storage_dtype lays them out
HF + PEFT: prompt (PromptTuningConfig, 100 virtual tokens, torch Adafactor), lora
(LoraConfig r 8, alpha 16, q and v, torch AdamW + clip 1.0), ia3 (IA3Config on k, v, wo,
torch Adafactor lr 3e-3), deep-prompt (PrefixTuningConfig, 32 virtual tokens, AdamW + clip
1.0; PEFT's default token_dim is d_model, which does not fit T5 1.1's 6 x 64 heads, so the
worker records that error and retries with token_dim = heads * head_dim). The other t5pt
methods have no PEFT counterpart here.

Each (framework, method) runs in a subprocess of its own (`--worker jax:lora`, ...) so its
peak memory is its own: peak RSS (ru_maxrss, which includes XLA compilation and, for the
bf16 / int8 bases, the float32 init they are built from) on CPU, peak device bytes on GPU.
The RSS after the timed steps is reported too, and for t5pt the bytes of the frozen tree.
"""

import argparse
import json
import sys

import numpy as np
from train_step import (
  INPUTS,
  PROMPT,
  ROOT,
  TARGETS,
  add_common_arguments,
  chosen_frameworks,
  current_rss_mib,
  describe_shapes,
  hf_t5_model,
  jax_measurements,
  print_mfu,
  run_workers,
  sizes,
  torch_inputs,
  torch_measurements,
  torch_train_step,
)

PREFIX = 32
METHODS = ('prompt', 'lora', 'prompt+lora', 'deep-prompt', 'ia3', 'prompt-bf16', 'prompt-int8')
TORCH_METHODS = ('prompt', 'lora', 'deep-prompt', 'ia3')


def t5pt_method(method: str):
  """(T5Config overrides, optimizer, frozen dtype) for one method; what trains follows
  from the overrides (T5Config.tuned_parameters), as in a t5pt run."""
  sys.path.insert(0, str(ROOT))
  from t5pt.model.methods import ia3
  from t5pt.model.methods import lora as lora_method
  from t5pt.model import network
  from t5pt.training import optimizers

  prompt = dict(prompt_length=PROMPT)
  lora = dict(lora_rules=lora_method.DEFAULT_LORA_RULES)
  adamw = lambda **kw: optimizers.adamw(decay_steps=1000, **kw)
  if method in ('prompt', 'prompt-bf16', 'prompt-int8'):
    extra = dict(int8_kernels=True) if method == 'prompt-int8' else {}
    return (
      {**prompt, **extra},
      optimizers.adafactor(),
      'float32' if method == 'prompt' else 'bfloat16',
    )
  if method == 'lora':
    return lora, adamw(), 'float32'
  if method == 'prompt+lora':
    return (
      {**prompt, **lora},
      optimizers.by_parameter(
        [(network.PROMPT_PATH, optimizers.adafactor()), ('.*/lora_[ab]', adamw())]
      ),
      'float32',
    )
  if method == 'deep-prompt':
    return dict(prefix_length=PREFIX), adamw(peak_learning_rate=5e-3), 'float32'
  if method == 'ia3':
    return (
      dict(ia3_pattern=ia3.DEFAULT_IA3_PATTERN),
      optimizers.adafactor(learning_rate=3e-3),
      'float32',
    )
  raise ValueError(method)


def frozen_tree(float_params: dict, shapes: dict, frozen_paths: list, frozen_dtype: str) -> dict:
  """The flat frozen leaves as t5pt holds them after loading a base: int8 kernels with their
  float32 scales where the network declares them (quantization.stored_tensors), every
  other leaf in `frozen_dtype`."""
  import jax.numpy as jnp

  from t5pt.model import quantization

  frozen = {}
  for path in frozen_paths:
    if quantization.is_scale(path):
      continue  # Made with its kernel.
    dtype = quantization.storage_dtype(path, shapes[path].dtype, frozen_dtype)
    for key, array in quantization.stored_tensors(
      path, np.asarray(float_params[path]), dtype
    ).items():
      frozen[key] = jnp.asarray(
        array, quantization.storage_dtype(key, shapes[key].dtype, frozen_dtype)
      )
  assert set(frozen) == set(frozen_paths), set(frozen) ^ set(frozen_paths)
  return frozen


def run_jax(method: str, args) -> dict:
  import dataclasses

  import flax.linen as nn
  import jax

  sys.path.insert(0, str(ROOT))
  from t5pt.model import models
  from t5pt.model import network
  from t5pt.runtime import partitioning

  base_mib = current_rss_mib()
  overrides, opt, frozen_dtype = t5pt_method(method)
  cfg = network.T5Config(**sizes(args.model), dropout_rate=0.0, dtype=args.dtype, **overrides)
  model = models.EncoderDecoderModel(cfg)
  float_model = models.EncoderDecoderModel(dataclasses.replace(cfg, int8_kernels=False))
  init = lambda m: m.init(jax.random.PRNGKey(0), INPUTS, TARGETS)
  params = partitioning.flatten(nn.unbox(init(float_model)))
  shapes = partitioning.flatten(nn.unbox(jax.eval_shape(lambda: init(model))))
  trainable_paths, frozen_paths = partitioning.split_trainable(list(shapes), cfg.tuned_parameters())
  trainable = partitioning.unflatten({k: params[k] for k in trainable_paths})
  frozen = frozen_tree(params, shapes, frozen_paths, frozen_dtype)
  del params  # the float init, where the frozen tree is a cast or quantised copy
  frozen_bytes = sum(x.nbytes for x in frozen.values())
  frozen = partitioning.unflatten(frozen)
  result = jax_measurements(model, opt, trainable, frozen, args, base_mib)
  return {
    **result,
    'frozen_mib': frozen_bytes / 2**20,
    'frozen_dtype': 'int8 kernels + bfloat16' if cfg.int8_kernels else frozen_dtype,
    'encoder_positions': INPUTS + cfg.prompt_length,
  }


def run_torch(method: str, args) -> dict:
  import peft
  import torch

  base_mib = current_rss_mib()
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  inputs = torch_inputs(args.batch, device)
  seq2seq, note = peft.TaskType.SEQ_2_SEQ_LM, ''
  if method == 'prompt':
    config = peft.PromptTuningConfig(task_type=seq2seq, num_virtual_tokens=PROMPT)
  elif method == 'lora':
    config = peft.LoraConfig(
      task_type=seq2seq, r=8, lora_alpha=16, target_modules=['q', 'v'], lora_dropout=0.0
    )
  elif method == 'ia3':
    config = peft.IA3Config(
      task_type=seq2seq, target_modules=['k', 'v', 'wo'], feedforward_modules=['wo']
    )
  else:
    config = peft.PrefixTuningConfig(task_type=seq2seq, num_virtual_tokens=PREFIX)
    try:  # PEFT's default token_dim (d_model 512) does not split into 6 heads x 64
      with torch.no_grad():
        peft.get_peft_model(hf_t5_model(args.model), config).to(device)(**inputs)
    except RuntimeError as e:
      token_dim = sizes(args.model)['num_heads'] * sizes(args.model)['head_dim']
      note = (
        f'PrefixTuningConfig(num_virtual_tokens={PREFIX}) fails: '
        f'{type(e).__name__}: {str(e).splitlines()[0]}; ran with token_dim='
        f'{token_dim}'
      )
      config = peft.PrefixTuningConfig(
        task_type=seq2seq, num_virtual_tokens=PREFIX, token_dim=token_dim
      )
  model = peft.get_peft_model(hf_t5_model(args.model), config).to(device).train()
  params = [p for p in model.parameters() if p.requires_grad]
  clip = method in ('lora', 'deep-prompt')
  if clip:
    optimizer, name = (
      torch.optim.AdamW(params, lr=5e-3 if method == 'deep-prompt' else 1e-3),
      'torch AdamW',
    )
  elif hasattr(torch.optim, 'Adafactor'):
    optimizer, name = (
      torch.optim.Adafactor(params, lr=3e-3 if method == 'ia3' else 1e-2),
      'torch Adafactor',
    )
  else:
    optimizer, name = torch.optim.AdamW(params, lr=0.3), 'torch AdamW'
  losses = []
  train_step = torch_train_step(model, inputs, optimizer, params, clip, args.dtype)
  step = lambda: losses.append(train_step())

  return {
    **torch_measurements(step, device, args.steps, base_mib),
    'trainable_params': sum(p.numel() for p in params),
    'optimizer': name,
    'frozen_mib': None,
    'frozen_dtype': 'float32',
    'loss': float(losses[-1]),
    'encoder_positions': INPUTS + (PROMPT if method == 'prompt' else 0),
    'note': note,
  }


def run_worker(name: str, args) -> None:
  framework, method = name.split(':')
  result = (run_jax if framework == 'jax' else run_torch)(method, args)
  result.setdefault(
    'optimizer',
    {
      'prompt+lora': 't5pt adafactor + adamw',
      'lora': 't5pt adamw',
      'deep-prompt': 't5pt adamw',
    }.get(method, 't5pt adafactor'),
  )
  result.update(
    framework='t5pt' if framework == 'jax' else 'HF+PEFT',
    method=method,
    tokens_per_s=result['steps_per_s'] * args.batch * (INPUTS + TARGETS),
  )
  print(json.dumps(result), flush=True)


def print_table(rows: list[dict]) -> None:
  print(
    '| framework | method | trainable params | optimizer | encoder positions | steps/s | '
    'step s (min-max) | tokens/s | peak mem MiB | after steps MiB | '
    'frozen tree MiB (t5pt) |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    frozen = f"{r['frozen_mib']:.1f} ({r['frozen_dtype']})" if r['frozen_mib'] else '-'
    print(
      f"| {r['framework']} | {r['method']} | {r['trainable_params']:,} | "
      f"{r['optimizer']} | {r['encoder_positions']} | {r['steps_per_s']:.3f} | "
      f"{r['step_min_s']:.2f}-{r['step_max_s']:.2f} | {r['tokens_per_s']:.0f} | "
      f"{r['peak_mib']:.0f} | {r['end_mib']:.0f} | {frozen} |"
    )


def print_ratios(rows: list[dict]) -> None:
  found = {(r['framework'], r['method']): r for r in rows}
  for method in TORCH_METHODS:
    a, b = found.get(('t5pt', method)), found.get(('HF+PEFT', method))
    if a and b:
      print(
        f"t5pt / HF+PEFT, {method}: steps/s x{a['steps_per_s'] / b['steps_per_s']:.2f}, "
        f"peak mem x{a['peak_mib'] / b['peak_mib']:.2f}"
      )
  f32, bf16, int8 = (found.get(('t5pt', m)) for m in ('prompt', 'prompt-bf16', 'prompt-int8'))
  if f32 and bf16 and int8:
    print(
      f"frozen tree MiB: float32 {f32['frozen_mib']:.1f}, bfloat16 {bf16['frozen_mib']:.1f}"
      f", int8 {int8['frozen_mib']:.1f}"
    )
  if bf16 and int8:
    print(
      f"int8 / bf16 base (prompt): frozen MiB x{int8['frozen_mib'] / bf16['frozen_mib']:.2f}"
      f", step time x{bf16['steps_per_s'] / int8['steps_per_s']:.2f}, peak mem "
      f"x{int8['peak_mib'] / bf16['peak_mib']:.2f}, after-steps mem "
      f"x{int8['end_mib'] / bf16['end_mib']:.2f}"
    )
  if f32 and bf16:
    print(
      f"bf16 / float32 base (prompt): frozen MiB x{bf16['frozen_mib'] / f32['frozen_mib']:.2f}"
      f", step time x{f32['steps_per_s'] / bf16['steps_per_s']:.2f}"
    )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_common_arguments(parser, default_steps=5)
  parser.add_argument(
    '--methods', default=','.join(METHODS), help=f'comma list of {", ".join(METHODS)}'
  )
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    run_worker(args.worker, args)
    return 0
  methods = args.methods.split(',')
  if not set(methods) <= set(METHODS):
    parser.error(f'--methods takes {", ".join(METHODS)}, not {args.methods!r}')
  frameworks = chosen_frameworks(parser, args)
  selected = [
    f'{f}:{m}'
    for f in ('jax', 'torch')
    if f in frameworks
    for m in methods
    if f == 'jax' or m in TORCH_METHODS
  ]
  print(describe_shapes(args, 'for prompt methods'))
  rows = run_workers(selected, args, __file__)
  print_table(rows)
  print_mfu(rows, label='method')
  print_ratios(rows)
  for r in rows:
    if r.get('note'):
      print(f"note, {r['framework']} {r['method']}: {r['note']}")
  return 0 if len(rows) == len(selected) else 1


if __name__ == '__main__':
  sys.exit(main())
