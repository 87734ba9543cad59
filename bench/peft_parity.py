"""Training parity: the same LoRA and the same soft prompt trained in t5pt and in HF
transformers + PEFT, step by step, from the same values on the same batches.

Usage (from the repository root, in the test environment, which has the peer):

    .venv/bin/python bench/peft_parity.py [--steps 20] [--tolerance 1e-4]

1. A tiny T5 1.1 base (gin/models/t5_1_1_tiny.gin's sizes, t5pt's random init) is written
   as a t5pt run checkpoint and exported with t5pt's own exporter (`exporting.export_hf`) to an
   HF folder. Both frameworks load the base from that folder: t5pt with
   `opening.load_model`, transformers with `from_pretrained` (float32). Their
   teacher-forced losses on the first batch must agree before anything trains.
2. Each method starts from the same values on both sides: t5pt's LoRA factors (lora_a
   [in, r] from t5pt's init, lora_b [r, out] drawn small and nonzero so that step 0
   exercises the alpha / r scaling and A trains from step 1) copied, transposed, into
   PEFT's lora_A / lora_B; t5pt's soft prompt (prompts.sampled_vocab) copied into the
   first P rows of PEFT's prompt embedding.
3. Both train on the same fixed batches (seeded numpy, variable lengths, pad id 0): t5pt
   with the jitted step its trainer runs (`steps.build_train_step` on (trainable, frozen)
   trees, z-loss 0, dropout 0), PEFT with an eager torch loop (`model(**batch).loss`,
   backward, clip, step).

The counted comparison is AdamW at a constant learning rate with weight decay 0.01 and
global-norm clipping 1.0 (t5pt `optimizers.adamw` vs `torch.optim.AdamW` +
`clip_grad_norm_`). Printed too, and not counted:
  control      the same AdamW run with t5pt's default z-loss (1e-4), which HF lacks: what
               one real difference looks like at this tolerance (LoRA only);
  Adafactor    t5pt's `optimizers.adafactor` (optax) vs transformers' `Adafactor` with the
               closest settings and vs `torch.optim.Adafactor`: expected to differ;
  diagnostic   optax's Adafactor with factoring and weight decay aligned to transformers'
               (agrees), and the same with PEFT's default 2P prompt rows (does not).

Tolerance: float32 losses of the two frameworks differ by a few ulps (~1e-7 relative) at
step 0, and Adam-type updates carry relative gradient differences into the parameters at
about the same size, so 20 steps stay near 1e-6. The default 1e-4 is two orders above
that and below every real algorithmic difference the bench shows (the z-loss control and
the Adafactor variants give 6e-4 and more).

Exit status 1 when a counted comparison disagrees beyond --tolerance (relative, on the
loss at any step) or the base models disagree at step 0.
"""

import argparse
import dataclasses
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from t5pt.runtime import logs  # noqa: E402

logs.quiet_cli()  # Before TensorFlow and JAX load: keeps their native logs off the terminal.

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()  # Its lm_head tying warning: see load_hf.
transformers.logging.disable_progress_bar()

from t5pt.model.methods import lora  # noqa: E402
from t5pt.checkpoints import run_checkpoints  # noqa: E402
from t5pt.checkpoints import exporting  # noqa: E402
from t5pt.checkpoints import hf_format  # noqa: E402
from t5pt.checkpoints import opening  # noqa: E402
from t5pt.model import models  # noqa: E402
from t5pt.model import network  # noqa: E402
from t5pt.training import optimizers  # noqa: E402
from t5pt.runtime import partitioning  # noqa: E402
from t5pt.model import prompts  # noqa: E402
from t5pt.model import steps as t5pt_steps  # noqa: E402

TINY = dict(  # gin/models/t5_1_1_tiny.gin
  vocab_size=272,
  emb_dim=128,
  num_heads=4,
  num_encoder_layers=2,
  num_decoder_layers=2,
  head_dim=32,
  mlp_dim=256,
  mlp_activations=('gelu', 'linear'),
  logits_via_embedding=False,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
)
BATCH, INPUTS, TARGETS = 8, 32, 16
PROMPT, RANK, ALPHA = 8, 8, 16.0  # gin/methods/lora.gin: rank 8, alpha 16 on query and value
LORA_B_STD = 0.02
METHODS = ('lora', 'prompt')
ADAMW = dict(lora=5e-3, prompt=3e-2)  # constant learning rates
WEIGHT_DECAY, CLIP = 0.01, 1.0
ADAFACTOR = dict(lora=1e-2, prompt=0.3)  # prompt: Lester et al.'s (t5pt's default)
ADAFACTOR_WD = 1e-5  # t5pt's default weight_decay_rate


# ---------------------------------------------------------------------------------------
# Data


def make_batches(steps: int, seed: int = 0) -> list[dict]:
  """`steps` batches in t5pt's feature format (numpy), a learnable task with padding.

  Inputs are 6-31 random ids in [3, 40) then EOS (1), padded with 0; targets are the
  first 3-15 input ids reversed, then EOS. Decoder inputs are the targets shifted right
  with 0 (what HF derives from `labels`); loss weights mark the real target tokens.
  """
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(steps):
    inputs = np.zeros((BATCH, INPUTS), np.int32)
    targets = np.zeros((BATCH, TARGETS), np.int32)
    for row in range(BATCH):
      n_in = int(rng.integers(6, INPUTS))
      n_tgt = int(rng.integers(3, min(n_in, TARGETS - 1) + 1))
      ids = rng.integers(3, 40, n_in)
      inputs[row, : n_in + 1] = np.append(ids, 1)
      targets[row, : n_tgt + 1] = np.append(ids[:n_tgt][::-1], 1)
    shifted = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
    batches.append(
      {
        'encoder_input_tokens': inputs,
        'decoder_input_tokens': shifted,
        'decoder_target_tokens': targets,
        'decoder_loss_weights': (targets > 0).astype(np.float32),
      }
    )
  return batches


def hf_inputs(batch: dict) -> dict:
  """The same batch as HF keywords: padding masked in the encoder, -100 in the labels.
  HF's mean over non -100 labels is t5pt's 'NUM_REAL_TARGET_TOKENS' normalisation."""
  targets = batch['decoder_target_tokens']
  inputs = batch['encoder_input_tokens']
  return dict(
    input_ids=torch.from_numpy(inputs).long(),
    attention_mask=torch.from_numpy(inputs > 0).long(),
    labels=torch.from_numpy(np.where(targets > 0, targets, -100)).long(),
  )


# ---------------------------------------------------------------------------------------
# The base model


def base_config() -> network.T5Config:
  return network.T5Config(**TINY, dropout_rate=0.0)


def method_config(method: str) -> network.T5Config:
  """The base config plus one tuning method; what trains is its tuned_parameters()."""
  extra = (
    dict(lora_rules=((lora.DEFAULT_LORA_RULES[0][0], RANK, ALPHA),), lora_dropout=0.0)
    if method == 'lora'
    else dict(prompt_length=PROMPT)
  )
  return dataclasses.replace(base_config(), **extra)


def export_random_base(workdir: Path) -> str:
  """Writes t5pt's random init of the tiny base as a run checkpoint and exports it with
  `exporting.export_hf` (the run is its own base); returns the HF folder."""
  cfg = base_config()
  boxed = models.EncoderDecoderModel(cfg).init(jax.random.PRNGKey(0), INPUTS, TARGETS)
  params = jax.tree.map(np.asarray, nn.unbox(boxed))
  run_dir, hf_dir = str(workdir / 'base_run'), str(workdir / 'hf_base')
  saver = run_checkpoints.RunCheckpointer(run_dir)
  saver.save(params, None, run_checkpoints.RunMeta(step=1, trainable=('.*',), network_config=cfg))
  saver.wait_until_finished()
  saver.close()
  exporting.export_hf(opening.open_run(run_dir), hf_dir, run_dir, max_shard_bytes=1 << 30)
  return hf_dir


def load_hf(hf_dir: str):
  """transformers' T5 from the exported folder, float32, with the exported untied lm_head.

  transformers 5's T5Config always sets tie_word_embeddings=True (the saved flag only sets
  scale_decoder_outputs) and warns when a checkpoint holds distinct lm_head and shared
  weights; it then leaves them untied, which the assert checks."""
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr(), 'lm_head tied'
  return model


def load_frozen(hf_dir: str, cfg: network.T5Config) -> dict:
  """t5pt's frozen base, read from the HF folder as a run reads INITIAL_CHECKPOINT_PATH."""
  _, params = opening.load_model(hf_dir, cfg)
  return params


def check_base_agrees(hf_dir: str, batch: dict, tolerance: float) -> bool:
  """Teacher-forced loss and logits of the bare base in both frameworks on `batch`; also
  that HF's decoder inputs (derived from `labels`) are t5pt's decoder_input_tokens."""
  cfg = base_config()
  model = models.EncoderDecoderModel(cfg, models.LossConfig(z_loss=0.0))
  params = load_frozen(hf_dir, cfg)
  metrics = jax.jit(t5pt_steps.build_eval_step(model))({}, params, batch)
  ours = float(metrics['loss_sum'] / metrics['weight_sum'])
  logits = np.asarray(jax.jit(model.logits)(params, batch))
  hf_model = load_hf(hf_dir).eval()
  with torch.no_grad():
    out = hf_model(**hf_inputs(batch))
  shifted = hf_model._shift_right(hf_inputs(batch)['labels']).numpy()
  assert np.array_equal(shifted, batch['decoder_input_tokens']), 'decoder inputs differ'
  theirs = float(out.loss)
  valid = batch['decoder_target_tokens'] > 0
  logit_diff = float(np.abs(logits[valid] - out.logits.numpy()[valid]).max())
  rel = abs(ours - theirs) / abs(theirs)
  ok = rel <= tolerance
  print(
    f'step-0 base check (exported HF folder, batch 0): t5pt loss {ours:.7f}, HF loss '
    f'{theirs:.7f}, rel diff {rel:.1e}; max |logit diff| {logit_diff:.1e} on real target '
    f'positions: {"agree" if ok else "DISAGREE"}'
  )
  return ok


# ---------------------------------------------------------------------------------------
# Initial trainable values, and the same values in PEFT


def initial_trainable(method: str, frozen: dict) -> dict:
  """Flat {t5pt path: numpy} of the method's trainable leaves: t5pt's LoRA init with a
  small random lora_b, or a prompt sampled from the base's embedding rows."""
  cfg = method_config(method)
  boxed = models.EncoderDecoderModel(cfg).init(jax.random.PRNGKey(1), INPUTS, TARGETS)
  flat = partitioning.flatten(nn.unbox(boxed))
  paths, _ = partitioning.split_trainable(list(flat), cfg.tuned_parameters())
  trainable = {k: np.asarray(flat[k], np.float32) for k in paths}
  rng = np.random.default_rng(2)
  for k in trainable:
    if k.endswith(lora.LORA_B):
      trainable[k] = rng.normal(0.0, LORA_B_STD, trainable[k].shape).astype(np.float32)
  if method == 'prompt':
    embedding = np.asarray(partitioning.flatten(frozen)[network.EMBEDDING_PATH])
    trainable[network.PROMPT_PATH] = prompts.sampled_vocab(
      jax.random.PRNGKey(3), (PROMPT, cfg.emb_dim), embedding
    )
  return trainable


def peft_model(hf_dir: str, method: str, prompt_submodules: Optional[int]):
  """PEFT on the exported base: LoraConfig(r 8, alpha 16, q and v, no dropout) or
  PromptTuningConfig(P virtual tokens; `prompt_submodules` None is PEFT's default, 2 rows
  per virtual token for SEQ_2_SEQ_LM)."""
  seq2seq = peft.TaskType.SEQ_2_SEQ_LM
  if method == 'lora':
    config = peft.LoraConfig(
      task_type=seq2seq, r=RANK, lora_alpha=ALPHA, target_modules=['q', 'v'], lora_dropout=0.0
    )
  else:
    config = peft.PromptTuningConfig(
      task_type=seq2seq,
      num_virtual_tokens=PROMPT,
      num_transformer_submodules=prompt_submodules,
    )
  return peft.get_peft_model(load_hf(hf_dir), config).train()


def peft_views(model, method: str) -> dict[str, Callable]:
  """{t5pt path: () -> the PEFT tensor holding it, in t5pt's layout}. LoRA: lora_A.weight
  [r, in] and lora_B.weight [out, r] transposed; prompt: the first P embedding rows."""
  if method == 'prompt':
    weight = model.prompt_encoder['default'].embedding.weight
    return {network.PROMPT_PATH: lambda: weight[:PROMPT]}
  views = {}
  for kernel, module in hf_format.kernel_modules(method_config(method)).items():
    layer = model.base_model.model.get_submodule(module)
    if hasattr(layer, 'lora_A'):
      prefix = kernel[: -len('kernel')]
      a, b = layer.lora_A['default'].weight, layer.lora_B['default'].weight
      views[prefix + lora.LORA_A] = lambda a=a: a.T
      views[prefix + lora.LORA_B] = lambda b=b: b.T
  return views


def set_peft_values(model, method: str, values: dict) -> None:
  """Copies t5pt's initial values into PEFT's tensors; every PEFT trainable is covered."""
  views = peft_views(model, method)
  assert set(views) == set(values), set(views) ^ set(values)
  with torch.no_grad():
    for path, view in views.items():
      view().copy_(torch.from_numpy(np.array(values[path])))
  if method == 'lora':
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(v.size for v in values.values()), trainable


def peft_values(model, method: str) -> dict:
  return {k: view().detach().numpy().copy() for k, view in peft_views(model, method).items()}


# ---------------------------------------------------------------------------------------
# Optimizers and training loops


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One optimizer pairing: how each side builds it, and whether it counts."""

  name: str
  t5pt: Callable[[str], optax.GradientTransformation]  # method -> transform
  t5pt_label: str
  torch: Callable[[str, list], torch.optim.Optimizer]  # method, params -> optimizer
  torch_label: str
  clip: Optional[float] = None  # torch global-norm clipping
  kind: str = 'expected to differ'  # 'counted', 'expected to differ', 'diagnostic', 'control'
  prompt_submodules: Optional[int] = None  # PEFT's default (2 for seq2seq)
  methods: tuple = METHODS
  z_loss: float = 0.0  # t5pt's LossConfig.z_loss

  @property
  def counted(self) -> bool:
    return self.kind == 'counted'


def t5pt_adamw(method: str) -> optax.GradientTransformation:
  """optimizers.adamw at a constant rate: no warmup, cosine 'decay' from lr to lr (the
  schedule is checked to be constant)."""
  lr = ADAMW[method]
  opt = optimizers.adamw(
    peak_learning_rate=lr,
    warmup_steps=0,
    decay_steps=1000,
    end_learning_rate=lr,
    weight_decay=WEIGHT_DECAY,
    clip_grad_norm=CLIP,
  )
  rates = np.asarray(opt.learning_rate(jnp.arange(1001)))
  assert np.abs(rates - lr).max() <= 1e-6 * lr, 'schedule is not constant'
  return opt.transform


def t5pt_adafactor(method: str) -> optax.GradientTransformation:
  """t5pt's Adafactor (Lester et al.'s recipe): decay 0.8, update clipping 1.0, no
  parameter scaling, weight_decay_rate 1e-5, factored only where both dims >= 128."""
  return optimizers.adafactor(learning_rate=ADAFACTOR[method]).transform


def optax_adafactor_factor_all(method: str) -> optax.GradientTransformation:
  """t5pt's Adafactor with one change t5pt does not expose: optax factors every 2-D leaf
  (min_dim_size_to_factor=1, as transformers does) instead of only those whose two
  largest dims are >= 128."""
  return optax.adafactor(
    ADAFACTOR[method],
    min_dim_size_to_factor=1,
    decay_rate=0.8,
    multiply_by_parameter_scale=False,
    clipping_threshold=1.0,
    weight_decay_rate=ADAFACTOR_WD,
  )


def hf_adafactor(optax_convention: bool):
  """transformers' Adafactor with an absolute learning rate and no parameter scaling;
  weight decay 1e-5 as transformers applies it (p -= lr * wd * p) or, with
  `optax_convention`, as optax does (p -= wd * p, i.e. transformers' wd = 1e-5 / lr)."""

  def build(method: str, params: list) -> torch.optim.Optimizer:
    lr = ADAFACTOR[method]
    return transformers.optimization.Adafactor(
      params,
      lr=lr,
      scale_parameter=False,
      relative_step=False,
      warmup_init=False,
      clip_threshold=1.0,
      decay_rate=-0.8,
      weight_decay=ADAFACTOR_WD / lr if optax_convention else ADAFACTOR_WD,
    )

  return build


def torch_adamw(method: str, params: list) -> torch.optim.Optimizer:
  return torch.optim.AdamW(
    params, lr=ADAMW[method], betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY
  )


ADAMW_T5PT = f'optimizers.adamw(constant lr, weight_decay={WEIGHT_DECAY}, clip_grad_norm={CLIP})'
ADAMW_TORCH = f'torch.optim.AdamW(eps=1e-8, weight_decay={WEIGHT_DECAY}) + clip_grad_norm_({CLIP})'
HF_ADAFACTOR = 'transformers Adafactor(lr, scale_parameter=False, relative_step=False'
COMPARISONS = (
  Comparison('AdamW', t5pt_adamw, ADAMW_T5PT, torch_adamw, ADAMW_TORCH, CLIP, 'counted'),
  Comparison(
    'AdamW with t5pt\'s default z-loss',
    t5pt_adamw,
    ADAMW_T5PT + ', models.LossConfig() (z_loss 1e-4)',
    torch_adamw,
    ADAMW_TORCH + ' (HF: plain cross-entropy)',
    CLIP,
    'control',
    methods=('lora',),
    z_loss=1e-4,
  ),
  Comparison(
    'Adafactor vs transformers Adafactor',
    t5pt_adafactor,
    'optimizers.adafactor(lr) (optax: decay 0.8, update clip 1.0, wd 1e-5, no param scale)',
    hf_adafactor(optax_convention=False),
    HF_ADAFACTOR + ', weight_decay=1e-5)',
  ),
  Comparison(
    'Adafactor vs torch.optim.Adafactor',
    t5pt_adafactor,
    'optimizers.adafactor(lr) (as above)',
    lambda method, params: torch.optim.Adafactor(
      params, lr=ADAFACTOR[method], weight_decay=ADAFACTOR_WD
    ),
    'torch.optim.Adafactor(lr, weight_decay=1e-5): relative step, parameter scale',
  ),
  Comparison(
    'Adafactor, factoring and weight decay aligned',
    optax_adafactor_factor_all,
    'optax.adafactor as optimizers.adafactor but min_dim_size_to_factor=1',
    hf_adafactor(optax_convention=True),
    HF_ADAFACTOR + ', weight_decay=1e-5 / lr); PEFT prompt of P rows',
    kind='diagnostic',
    prompt_submodules=1,
  ),
  Comparison(
    'Adafactor aligned, PEFT\'s default 2P prompt rows',
    optax_adafactor_factor_all,
    'as above',
    hf_adafactor(optax_convention=True),
    'as above, PromptTuningConfig default (2P rows; update RMS over all of them)',
    kind='diagnostic',
    methods=('prompt',),
  ),
)


def train_t5pt(method, tx, z_loss, trainable, frozen, batches) -> tuple[list, dict]:
  """t5pt's jitted training step over `batches`: (loss before each update, final values)."""
  model = models.EncoderDecoderModel(method_config(method), models.LossConfig(z_loss=z_loss))
  step_fn = jax.jit(t5pt_steps.build_train_step(model, tx, jax.random.PRNGKey(0)))
  params = partitioning.unflatten({k: jnp.asarray(v) for k, v in trainable.items()})
  opt_state = tx.init(params)
  losses = []
  for i, batch in enumerate(batches):
    params, opt_state, metrics = step_fn(params, opt_state, frozen, batch, i)
    losses.append(float(metrics['loss_sum'] / metrics['weight_sum']))
  return losses, {k: np.asarray(v) for k, v in partitioning.flatten(params).items()}


def train_peft(model, method, comparison: Comparison, batches: list) -> tuple[list, dict]:
  """An eager torch loop over `batches`: (loss before each update, final values)."""
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = comparison.torch(method, params)
  losses = []
  for batch in batches:
    loss = model(**hf_inputs(batch)).loss
    loss.backward()
    if comparison.clip:
      torch.nn.utils.clip_grad_norm_(params, comparison.clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))
  return losses, peft_values(model, method)


# ---------------------------------------------------------------------------------------
# Report


def print_curves(ours: list, theirs: list) -> float:
  """Both loss curves side by side; returns the largest relative difference."""
  print(f'  {"step":>4}  {"t5pt loss":>11}  {"PEFT loss":>11}  {"abs diff":>9}  {"rel diff":>9}')
  worst = 0.0
  for i, (a, b) in enumerate(zip(ours, theirs)):
    rel = abs(a - b) / abs(b)
    worst = max(worst, rel)
    print(f'  {i:>4}  {a:11.7f}  {b:11.7f}  {abs(a - b):9.2e}  {rel:9.2e}')
  return worst


def print_parameters(ours: dict, theirs: dict, initial: dict) -> None:
  """Largest difference of the final trained values, per kind of leaf."""
  kinds = sorted({k.rsplit('/', 1)[-1] for k in ours})
  for kind in kinds:
    keys = [k for k in ours if k.endswith('/' + kind)]
    diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in keys)
    size = max(float(np.abs(theirs[k]).max()) for k in keys)
    moved = max(float(np.abs(theirs[k] - initial[k]).max()) for k in keys)
    print(
      f'  final {kind} ({len(keys)} leaves): max |t5pt - PEFT| {diff:.2e}; max |value| '
      f'{size:.3f}; max |change from init| {moved:.3f}'
    )


def run_comparison(method, comparison, setup: dict, cache: dict, tolerance: float) -> bool:
  """Trains both sides (t5pt's run is reused across comparisons that share it), prints the
  curves and a verdict; False only when a counted comparison disagrees."""
  label = f'{method}, {comparison.name}'
  print(f'\n== {label} ({comparison.kind}) ==')
  print(f'  t5pt: {comparison.t5pt_label}\n  PEFT: {comparison.torch_label}')
  start = time.perf_counter()
  key = (method, comparison.t5pt, comparison.z_loss)
  if key not in cache:
    tx = comparison.t5pt(method)
    cache[key] = train_t5pt(method, tx, comparison.z_loss, *setup[method], setup['batches'])
  ours, our_final = cache[key]
  model = peft_model(setup['hf_dir'], method, comparison.prompt_submodules)
  set_peft_values(model, method, setup[method][0])
  theirs, their_final = train_peft(model, method, comparison, setup['batches'])
  worst = print_curves(ours, theirs)
  print_parameters(our_final, their_final, setup[method][0])
  ok = worst <= tolerance
  verdict = ('PASS' if ok else 'FAIL') if comparison.counted else 'not counted'
  print(
    f'verdict {label}: max rel loss diff {worst:.2e} over {len(ours)} steps '
    f'(tolerance {tolerance:.0e}): {verdict}   [{time.perf_counter() - start:.0f} s]'
  )
  return ok or not comparison.counted


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=20, help='training steps per run')
  parser.add_argument(
    '--tolerance', type=float, default=1e-4, help='largest relative loss difference'
  )
  args = parser.parse_args()
  print(
    f'jax {jax.__version__}, flax {importlib.metadata.version("flax")}, optax '
    f'{optax.__version__}; torch {torch.__version__}, transformers '
    f'{transformers.__version__}, peft {peft.__version__}; {jax.devices()[0].device_kind}, '
    f'torch threads {torch.get_num_threads()}; float32'
  )
  print(
    f'tiny T5 1.1 {TINY}; batch {BATCH}, inputs <= {INPUTS}, targets <= {TARGETS} '
    f'(padded with 0); {args.steps} steps; LoRA r {RANK} alpha {ALPHA:g} on q, v; prompt '
    f'P={PROMPT}; dropout 0, z-loss 0'
  )
  torch.manual_seed(0)
  batches = make_batches(args.steps)
  ok = True
  with tempfile.TemporaryDirectory() as workdir:
    hf_dir = export_random_base(Path(workdir))
    if not check_base_agrees(hf_dir, batches[0], args.tolerance):
      return 1
    setup = {'hf_dir': hf_dir, 'batches': batches}
    for method in METHODS:
      frozen = load_frozen(hf_dir, method_config(method))
      setup[method] = (initial_trainable(method, frozen), frozen)
    cache = {}
    for method in METHODS:
      for comparison in COMPARISONS:
        if method in comparison.methods:
          ok &= run_comparison(method, comparison, setup, cache, args.tolerance)
  print('\nAll counted comparisons agree.' if ok else '\nA counted comparison DISAGREES.')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
