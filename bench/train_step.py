"""One training step of t5pt vs HF transformers + PEFT: prompt tuning and full fine-tuning.

Usage (from the repository root, inside the project's virtualenv):

    pip install torch==2.13.0 && pip install -r bench/requirements.txt   # the peer
    python bench/train_step.py [--steps 10] [--dtype float32|bfloat16] [--frameworks jax,torch]

Shapes are T5 1.1 / Flan-T5 (--model small|base|large|xl, as gin/models/t5_1_1_<size>.gin;
default small: vocab 32128, d_model 512, 6 heads x 64, gated-GELU MLP 1024, 8 + 8 layers,
untied logits) with --batch 8 (default), 128 input tokens and 32 target tokens. Prompt
tuning prepends P=100 soft-prompt positions, so the encoder sees 228 positions; full
fine-tuning has no prompt (128 positions). tokens/s counts real tokens only:
batch * (128 + 32) per step.

Optimizers: prompt tuning uses t5pt's Adafactor vs torch.optim.Adafactor (AdamW on torch
builds without it); full fine-tuning uses t5pt's AdamW (clip 1.0) vs torch.optim.AdamW
(clip 1.0). --dtype sets t5pt's activation dtype (parameters stay float32) and torch's
autocast dtype.

Each (framework, mode) runs in a subprocess of its own (`--worker jax-prompt`, ...) so
its peak memory is its own: peak RSS (ru_maxrss, which includes XLA compilation) on CPU,
peak device bytes on GPU. The RSS right after imports and after the timed steps is
reported too. t5pt's side imports only what `t5pt.model.steps` needs (jax, flax, optax, gin),
not TensorFlow or seqio, so it also runs on a machine that has only those.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUTS, TARGETS, PROMPT = 128, 32, 100
SHARED_SIZES = dict(
  vocab_size=32128,
  head_dim=64,
  mlp_activations=('gelu', 'linear'),
  logits_via_embedding=False,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
)  # t5pt's T5Config names
MODELS = {  # as gin/models/t5_1_1_<size>.gin (Flan-T5 has the same shapes)
  'small': dict(emb_dim=512, num_heads=6, mlp_dim=1024, num_encoder_layers=8, num_decoder_layers=8),
  'base': dict(
    emb_dim=768, num_heads=12, mlp_dim=2048, num_encoder_layers=12, num_decoder_layers=12
  ),
  'large': dict(
    emb_dim=1024, num_heads=16, mlp_dim=2816, num_encoder_layers=24, num_decoder_layers=24
  ),
  'xl': dict(
    emb_dim=2048, num_heads=32, mlp_dim=5120, num_encoder_layers=24, num_decoder_layers=24
  ),
}
WORKERS = ('jax-prompt', 'jax-full', 'torch-prompt', 'torch-full')
PEER_PACKAGES = ('torch', 'transformers', 'peft')


def sizes(model: str) -> dict:
  """t5pt T5Config architecture fields of one --model."""
  return {**SHARED_SIZES, **MODELS[model]}


def add_common_arguments(parser: argparse.ArgumentParser, default_steps: int) -> None:
  """The options both benches take: timing, dtype, frameworks and shapes."""
  parser.add_argument(
    '--steps', type=int, default=default_steps, help='timed steps per measurement'
  )
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--frameworks', default='jax,torch', help='comma list of jax, torch')
  parser.add_argument(
    '--model', default='small', choices=sorted(MODELS), help='T5 1.1 / Flan-T5 size'
  )
  parser.add_argument('--batch', type=int, default=8, help='examples per step')


def chosen_frameworks(parser: argparse.ArgumentParser, args) -> list[str]:
  """--frameworks, checked, without torch when the peer is not installed."""
  frameworks = args.frameworks.split(',')
  if not set(frameworks) <= {'jax', 'torch'}:
    parser.error(f'--frameworks takes jax and/or torch, not {args.frameworks!r}')
  if 'torch' in frameworks and not all(importlib.util.find_spec(p) for p in PEER_PACKAGES):
    print('peer not installed: pip install -r bench/requirements.txt')
    frameworks.remove('torch')
  return frameworks


def run_workers(names: list[str], args, script: str) -> list[dict]:
  """Runs each worker of `script` in turn; prints the load and the versions around them."""
  print('load average before: %.2f %.2f %.2f' % os.getloadavg())
  rows = []
  for name in names:
    print(f'running {name} ...', flush=True)
    rows += [result] if (result := spawn(name, args, script)) else []
  for r in {r['version']: r for r in rows}.values():
    print(f"{r['framework']}: {r['version']} on {r['device']} (memory: {r['memory']})")
  print('load average after: %.2f %.2f %.2f' % os.getloadavg())
  return rows


def describe_shapes(args, prompt_note: str) -> str:
  return (
    f'T5 1.1-{args.model} shapes {sizes(args.model)}, batch {args.batch}, inputs '
    f'{INPUTS} (+{PROMPT} prompt positions {prompt_note}), targets {TARGETS}, '
    f'{args.steps} timed steps, dtype {args.dtype}'
  )


def make_batch(batch_size: int, seed: int = 0) -> dict:
  """Random ids in [3, 32000), no padding; decoder inputs are the shifted targets."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(3, 32000, (batch_size, INPUTS), dtype=np.int32)
  targets = rng.integers(3, 32000, (batch_size, TARGETS), dtype=np.int32)
  shifted = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {
    'encoder_input_tokens': inputs,
    'decoder_input_tokens': shifted,
    'decoder_target_tokens': targets,
    'decoder_loss_weights': np.ones((batch_size, TARGETS), np.float32),
  }


def current_rss_mib() -> float:
  with open('/proc/self/status') as f:
    kib = next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
  return kib / 1024


def cpu_memory(base_mib: float) -> dict:
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  return {
    'memory': 'process RSS',
    'peak_mib': peak_mib,
    'base_mib': base_mib,
    'end_mib': current_rss_mib(),
  }


def device_memory(peak_bytes: int, end_bytes: int) -> dict:
  return {
    'memory': 'device memory',
    'peak_mib': peak_bytes / 2**20,
    'base_mib': 0.0,
    'end_mib': end_bytes / 2**20,
  }


def time_steps(step, sync, steps: int, warmup: int = 2) -> dict:
  """Runs `warmup` untimed steps (the first compiles), then times `steps` one by one.

  steps/s comes from the median step time, which a burst of load from another process on
  a shared machine moves less than it moves the mean; min and max show the spread.
  """
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - start)
  return {
    'steps_per_s': 1 / float(np.median(times)),
    'step_min_s': min(times),
    'step_max_s': max(times),
  }


def run_jax(prompt: bool, args) -> dict:
  import flax.linen as nn
  import jax

  sys.path.insert(0, str(ROOT))
  from t5pt.model import models
  from t5pt.model import network
  from t5pt.runtime import partitioning
  from t5pt.training import optimizers

  base_mib = current_rss_mib()
  cfg = network.T5Config(
    **sizes(args.model), dropout_rate=0.0, dtype=args.dtype, prompt_length=PROMPT if prompt else 0
  )
  model = models.EncoderDecoderModel(cfg)
  params = partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(0), INPUTS, TARGETS)))
  trainable_paths, frozen_paths = partitioning.split_trainable(
    list(params), [network.PROMPT_PATH] if prompt else ['.*']
  )
  trainable = partitioning.unflatten({k: params[k] for k in trainable_paths})
  frozen = partitioning.unflatten({k: params[k] for k in frozen_paths})
  opt = optimizers.adafactor() if prompt else optimizers.adamw(decay_steps=1000)
  result = jax_measurements(model, opt, trainable, frozen, args, base_mib)
  return {**result, 'optimizer': 't5pt adafactor' if prompt else 't5pt adamw'}


def jax_measurements(model, opt, trainable, frozen, args, base_mib: float) -> dict:
  """Timing, memory, trainable-parameter count, last loss, device and version of t5pt's
  jitted training step on trainable / frozen (nested) parameters, --batch examples."""
  import jax
  import mfu

  from t5pt.model.steps import build_train_step

  opt_state = jax.jit(opt.transform.init)(trainable)
  batch = jax.device_put(make_batch(args.batch))
  train_step = (
    jax.jit(build_train_step(model, opt.transform, jax.random.PRNGKey(1)), donate_argnums=(0, 1))
    .lower(trainable, opt_state, frozen, batch, 0)
    .compile()
  )
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable))
  index, metrics = 0, None

  def step():
    nonlocal trainable, opt_state, metrics, index
    trainable, opt_state, metrics = train_step(trainable, opt_state, frozen, batch, index)
    index += 1

  timing = time_steps(step, lambda: jax.block_until_ready((trainable, metrics)), args.steps)
  peak, peak_source = mfu.device_peak()
  device = jax.devices()[0]
  memory = (
    cpu_memory(base_mib)
    if device.platform == 'cpu'
    else device_memory(
      device.memory_stats()['peak_bytes_in_use'], device.memory_stats()['bytes_in_use']
    )
  )
  return {
    **timing,
    **mfu.utilisation(mfu.step_flops(train_step), timing['steps_per_s'], peak),
    'peak_source': peak_source,
    'trainable_params': count,
    **memory,
    'loss': float(metrics['loss_sum'] / metrics['weight_sum']),
    'device': device.device_kind,
    'version': f'jax {jax.__version__}',
  }


def hf_t5_model(model_size: str):
  """The peer model: HF T5 of --model's sizes, untied lm_head at t5pt's init scale."""
  import torch
  import transformers

  torch.manual_seed(0)
  shape = sizes(model_size)
  config = transformers.T5Config(
    vocab_size=shape['vocab_size'],
    d_model=shape['emb_dim'],
    num_heads=shape['num_heads'],
    d_kv=shape['head_dim'],
    d_ff=shape['mlp_dim'],
    num_layers=shape['num_encoder_layers'],
    num_decoder_layers=shape['num_decoder_layers'],
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    dropout_rate=0.0,
  )
  model = transformers.T5ForConditionalGeneration(config)
  # transformers 5 ties lm_head to the embedding whatever tie_word_embeddings says (it
  # only turns off the 1.0-style output scaling); untie it as T5 1.1 checkpoints are,
  # at t5pt's init scale so both start near ln(vocab) (HF's own std 1.0 starts near 100).
  model.config.tie_word_embeddings = False
  model.lm_head.weight = torch.nn.Parameter(
    torch.randn_like(model.shared.weight) * shape['emb_dim'] ** -0.5
  )
  return model


def torch_inputs(batch_size: int, device) -> dict:
  """make_batch as keyword arguments of an HF T5 forward pass that returns the loss."""
  import torch

  batch = {
    k: torch.from_numpy(v).long().to(device)
    for k, v in make_batch(batch_size).items()
    if k != 'decoder_loss_weights'
  }
  return dict(
    input_ids=batch['encoder_input_tokens'],
    attention_mask=torch.ones_like(batch['encoder_input_tokens']),
    decoder_input_ids=batch['decoder_input_tokens'],
    labels=batch['decoder_target_tokens'],
  )


def torch_train_step(model, inputs: dict, optimizer, params, clip: bool, dtype: str):
  """One eager training step (autocast to bf16 when --dtype asks); returns the loss."""
  import torch

  device_type = inputs['input_ids'].device.type

  def step():
    with torch.autocast(device_type, torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = model(**inputs).loss
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return step


def torch_measurements(step, device, steps: int, base_mib: float) -> dict:
  """Timing, memory, device and versions of a torch training `step`."""
  import torch
  import transformers

  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
  timing = time_steps(step, sync, steps)
  on_cpu = device.type == 'cpu'
  memory = (
    cpu_memory(base_mib)
    if on_cpu
    else device_memory(torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated())
  )
  return {
    **timing,
    **memory,
    'device': 'cpu' if on_cpu else torch.cuda.get_device_name(),
    'version': f'torch {torch.__version__}, transformers {transformers.__version__}, '
    f'peft {importlib.metadata.version("peft")}',
  }


def run_torch(prompt: bool, args) -> dict:
  import torch

  base_mib = current_rss_mib()
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  model = hf_t5_model(args.model)
  if prompt:
    import peft

    model = peft.get_peft_model(
      model,
      peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT),
    )
  model.to(device).train()
  params = [p for p in model.parameters() if p.requires_grad]
  if not prompt:
    optimizer, name = torch.optim.AdamW(params, lr=1e-3), 'torch AdamW'
  elif hasattr(torch.optim, 'Adafactor'):
    optimizer, name = torch.optim.Adafactor(params), 'torch Adafactor'
  else:
    optimizer, name = torch.optim.AdamW(params, lr=0.3), 'torch AdamW'
  step = torch_train_step(
    model, torch_inputs(args.batch, device), optimizer, params, clip=not prompt, dtype=args.dtype
  )

  return {
    **torch_measurements(step, device, args.steps, base_mib),
    'trainable_params': sum(p.numel() for p in params),
    'optimizer': name,
  }


def run_worker(name: str, args) -> None:
  framework, mode = name.split('-')
  prompt = mode == 'prompt'
  result = (run_jax if framework == 'jax' else run_torch)(prompt, args)
  result.update(
    framework='t5pt' if framework == 'jax' else 'HF+PEFT' if prompt else 'HF',
    mode=mode,
    encoder_positions=INPUTS + (PROMPT if prompt else 0),
    target_length=TARGETS,
    tokens_per_s=result['steps_per_s'] * args.batch * (INPUTS + TARGETS),
  )
  print(json.dumps(result), flush=True)


def spawn(name: str, args, script: str) -> dict | None:
  """Runs one worker of `script` in a fresh interpreter; returns its JSON result, None on
  failure."""
  command = [
    sys.executable,
    script,
    '--worker',
    name,
    '--steps',
    str(args.steps),
    '--dtype',
    args.dtype,
    '--model',
    args.model,
    '--batch',
    str(args.batch),
  ]
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith('{')]
  if done.returncode or not lines:
    print(f'{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}', file=sys.stderr)
    return None
  return json.loads(lines[-1])


def print_table(rows: list[dict]) -> None:
  print(
    '| framework | mode | encoder positions | target length | optimizer | steps/s | '
    'step s (min-max) | tokens/s | peak mem (MiB) | after imports (MiB) | '
    'after steps (MiB) | trainable params |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(
      f"| {r['framework']} | {r['mode']} | {r['encoder_positions']} | "
      f"{r['target_length']} | {r['optimizer']} | {r['steps_per_s']:.3f} | "
      f"{r['step_min_s']:.2f}-{r['step_max_s']:.2f} | "
      f"{r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} | {r['base_mib']:.0f} | "
      f"{r['end_mib']:.0f} | {r['trainable_params']:,} |"
    )


def print_mfu(rows: list[dict], label: str = 'mode') -> None:
  """One line per t5pt row: XLA's FLOPs per step, FLOP/s achieved, and the fraction of the
  device's peak (see bench/mfu.py)."""
  for r in rows:
    if 'mfu' in r:
      print(
        f"MFU t5pt {r[label]}: {r['step_gflop']:.1f} GFLOP/step x {r['steps_per_s']:.3f} "
        f"steps/s = {r['achieved_tflop_s'] * 1e3:.1f} GFLOP/s of {r['peak_tflop_s'] * 1e3:.1f} "
        f"({r['peak_source']}): {100 * r['mfu']:.1f}%"
      )


def print_ratios(rows: list[dict]) -> None:
  found = {(r['framework'].split('+')[0], r['mode']): r for r in rows}
  pairs = [(f't5pt / HF, {m}', ('t5pt', m), ('HF', m)) for m in ('prompt', 'full')]
  pairs.append(('t5pt prompt / t5pt full', ('t5pt', 'prompt'), ('t5pt', 'full')))
  for label, a, b in pairs:
    if a in found and b in found:
      x, y = found[a], found[b]
      print(
        f"{label}: steps/s x{x['steps_per_s'] / y['steps_per_s']:.2f}, "
        f"peak mem x{x['peak_mib'] / y['peak_mib']:.2f}, over-imports mem "
        f"x{(x['peak_mib'] - x['base_mib']) / (y['peak_mib'] - y['base_mib']):.2f}"
      )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_common_arguments(parser, default_steps=10)
  parser.add_argument('--worker', choices=WORKERS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    run_worker(args.worker, args)
    return 0
  frameworks = chosen_frameworks(parser, args)
  selected = [name for name in WORKERS if name.split('-')[0] in frameworks]
  print(describe_shapes(args, 'in prompt mode'))
  rows = run_workers(selected, args, __file__)
  print_table(rows)
  print_mfu(rows)
  print_ratios(rows)
  return 0 if len(rows) == len(selected) else 1


if __name__ == '__main__':
  sys.exit(main())
