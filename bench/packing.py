"""Does PACK=True pay? Real (non-padding) tokens/s packed vs unpacked, on realistic lengths.

Usage (from the repository root, inside the project's virtualenv):

    python bench/packing.py [--steps 5] [--batches 50] [--model mini|small|...]

Two synthetic seqio tasks are registered in-process (no download): pre-tokenized id
sequences (seqio.PassThroughVocabulary, ids in [3, 32000), EOS 1 appended by
append_eos_after_trim) whose lengths are drawn to look like

* sentiment: SST-2 sentences under T5's "sst2 sentence: " template. Words per sentence
  lognormal (median 17, sigma 0.5, clipped to 3-60: SST-2's dev sentences average ~19
  words, up to ~55, from memory), x1.3 SentencePiece tokens per word, + 5 template tokens: inputs of
  ~9-83 tokens, median ~27. Target: one token ("positive"/"negative" are one T5 piece)
  + EOS = 2 tokens.
* alpaca: Alpaca-52k style instructions. Instruction lognormal (median 16 tokens, sigma
  0.45, 4-80); 40% of examples also carry an input field (lognormal median 30, sigma 0.9,
  2-600), + 6 template tokens; response lognormal (median 60 tokens, sigma 0.95, 1-1000):
  inputs ~10-300 tokens, targets ~20-400 with a long tail (~6% over 256), as the
  dataset card's summary statistics describe it (from memory, not measured here).

Each example goes through t5pt's own pipeline, `t5pt.runtime.data.get_dataset(..., pack=...)`,
exactly what a training run with PACK=True/False does: TASK_FEATURE_LENGTHS['inputs']
includes the PROMPT_LENGTH prompt positions, seqio's EncDecFeatureConverter packs or pads.

Per (task, TASK_FEATURE_LENGTHS, pack) the script reports, over --batches batches of the
repeated, shuffled training stream:
* examples per batch, how full the inputs and targets token positions are, and the
  padding efficiency: non-padding input + target tokens / token positions (the prompt's
  positions are in neither);
* steps/s of t5pt's jitted training step (`t5pt.model.steps.build_train_step`, prompt tuning,
  Adafactor, as bench/train_step.py runs it) on those very batches, 1 / median step time
  after warm-up, and real tokens/s = mean real tokens per batch x steps/s (the trainer's
  tokens_per_second counts the same tokens); the ratio packed / unpacked.

The unpacked and packed steps of a setting are timed alternately (2 warm-up steps each,
then --steps pairs), so load from other processes on the shared machine hits both alike;
steps/s of different settings are not comparable with each other on a loaded machine.

Then three checks of what packing changes in training: (1) one pass over the 2000
validation examples keeps the same examples and tokens in both modes, those drawn cut to
the budget (seqio trims every example before it packs or pads); (2) the same examples
packed and unpacked give the same per-token losses without an input prompt (full
fine-tuning, LoRA, IA3) and with deep-prompt prefixes, but not with a PROMPT_LENGTH soft
prompt, whose positions are shared by every segment and attend only to themselves when
packed (measured at a random init: the size is an indication only); (3) each example's
share of the loss under each loss_normalizing_factor, from the gradient of
models.loss_and_metrics itself, packed relative to unpacked.
"""

import argparse
import dataclasses
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_step  # noqa: E402  (bench/train_step.py: T5 1.1 shapes)

PROMPT = 100
VOCAB_IDS = (3, 32000)  # token ids drawn from [3, 32000): 0 pads, 1 is EOS
LABEL_IDS = (1465, 2841)  # stand-ins for the one-piece "positive" / "negative"
NUM_EXAMPLES = {'train': 20_000, 'validation': 2_000}
MODELS = {
  'mini': dict(emb_dim=256, num_heads=4, mlp_dim=512, num_encoder_layers=4, num_decoder_layers=4),
  **train_step.MODELS,
}

LengthFn = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def lognormal(rng: np.random.Generator, n: int, median: float, sigma: float, lo, hi):
  """[n] int lengths, lognormal around `median`, clipped to [lo, hi]."""
  return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), lo, hi).astype(np.int32)


def sentiment_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
  """([n] input tokens, [n] target tokens) before EOS, SST-2-like (module docstring)."""
  words = lognormal(rng, n, 17, 0.5, 3, 60)
  return np.round(words * 1.3).astype(np.int32) + 5, np.ones(n, np.int32)


def alpaca_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
  """([n] input tokens, [n] target tokens) before EOS, Alpaca-like (module docstring)."""
  instruction = lognormal(rng, n, 16, 0.45, 4, 80)
  context = lognormal(rng, n, 30, 0.9, 2, 600) * (rng.random(n) < 0.4)
  return instruction + context + 6, lognormal(rng, n, 60, 0.95, 1, 1000)


DISTRIBUTIONS: dict[str, LengthFn] = {'sentiment': sentiment_lengths, 'alpaca': alpaca_lengths}
LABEL_TARGETS = ('sentiment',)  # targets are one of LABEL_IDS, not random ids


def draw_lengths(dist: str, split: str) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
  """([n] input, [n] target lengths before EOS, the generator to go on with) of a split,
  the same in every process (seeded by a CRC32 of the names)."""
  rng = np.random.default_rng(zlib.crc32(f'{dist}/{split}'.encode()))
  n_in, n_tg = DISTRIBUTIONS[dist](rng, NUM_EXAMPLES[split])
  return n_in, n_tg, rng


def random_ids(length, seed):
  """[length] int32 ids in VOCAB_IDS, a pure function of (seed, length)."""
  import tensorflow as tf

  return tf.random.stateless_uniform(
    [length], seed=seed, minval=VOCAB_IDS[0], maxval=VOCAB_IDS[1], dtype=tf.int32
  )


def source_fn(dist: str):
  """seqio dataset_fn: each split's examples {'inputs': [n_in], 'targets': [n_tg]} ids."""
  import tensorflow as tf

  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    n_in, n_tg, rng = draw_lengths(dist, split)
    n = len(n_in)
    labels = np.asarray(LABEL_IDS, np.int32)[rng.integers(0, 2, n)]

    def example(i, a, b, label):
      inputs = random_ids(a, tf.stack([i, 0]))
      targets = label[None] if dist in LABEL_TARGETS else random_ids(b, tf.stack([i, 1]))
      return {'inputs': inputs, 'targets': targets}

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int32), n_in, n_tg, labels))
    return ds.map(example)

  return dataset_fn


def register_tasks() -> dict[str, str]:
  """Registers bench_packing_<distribution> for each of DISTRIBUTIONS: {dist: task}."""
  import seqio

  vocabulary = seqio.PassThroughVocabulary(32128, eos_id=1)
  features = {k: seqio.Feature(vocabulary, add_eos=True) for k in ('inputs', 'targets')}
  names = {}
  for dist in DISTRIBUTIONS:
    name = names[dist] = f'bench_packing_{dist}'
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(source_fn(dist), splits=list(NUM_EXAMPLES)),
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      output_features=features,
    )
  return names


@dataclasses.dataclass(frozen=True)
class Setting:
  """One TASK_FEATURE_LENGTHS of one distribution; `note` says what binds the packing."""

  dist: str
  inputs: int  # TASK_FEATURE_LENGTHS['inputs'], prompt positions included
  targets: int
  note: str

  @property
  def lengths(self) -> dict[str, int]:
    return {'inputs': self.inputs, 'targets': self.targets}

  @property
  def label(self) -> str:
    return f'{self.inputs - PROMPT}+{PROMPT}p / {self.targets}'


SETTINGS = (
  Setting('sentiment', PROMPT + 128, 2, 'targets hold one example'),
  Setting('sentiment', PROMPT + 128, 4, 'targets hold two'),
  Setting('sentiment', PROMPT + 128, 16, 'inputs bind'),
  Setting('alpaca', PROMPT + 256, 128, 'targets bind'),
  Setting('alpaca', PROMPT + 412, 256, 'targets bind'),
)


def sample_batches(task: str, setting: Setting, pack: bool, batch: int, count: int):
  """`count` numpy batches [batch, ...] of the training stream, as a run would draw them."""
  from t5pt.runtime import data

  ds = data.get_dataset(
    task, setting.lengths, 'train', prompt_length=PROMPT, shuffle=True, seed=0, pack=pack
  )
  batches = data.iterate_batches(ds, batch, drop_remainder=True)
  return [next(batches) for _ in range(count)]


def examples_in(batch: dict) -> int:
  """Examples in a converted batch: packed segments, or unpacked rows with a target."""
  if 'decoder_segment_ids' in batch:
    return int(batch['decoder_segment_ids'].max(axis=1).sum())
  return int((batch['decoder_target_tokens'] > 0).any(axis=1).sum())


def real_tokens(batch: dict) -> int:
  """Non-padding input + target tokens (what the trainer's tokens_per_second counts)."""
  return int((batch['encoder_input_tokens'] > 0).sum() + (batch['decoder_target_tokens'] > 0).sum())


def batch_stats(batches: list[dict]) -> dict:
  """Means over `batches` of examples, real tokens and the fill of each feature."""
  inputs = np.mean([(b['encoder_input_tokens'] > 0).mean() for b in batches])
  targets = np.mean([(b['decoder_target_tokens'] > 0).mean() for b in batches])
  positions = sum(b['encoder_input_tokens'].size + b['decoder_target_tokens'].size for b in batches)
  return {
    'examples': float(np.mean([examples_in(b) for b in batches])),
    'tokens': float(np.mean([real_tokens(b) for b in batches])),
    'inputs_fill': float(inputs),
    'targets_fill': float(targets),
    'efficiency': sum(real_tokens(b) for b in batches) / positions,
  }


def truncated(setting: Setting) -> dict:
  """Fractions of the training split's inputs and targets (EOS included) over budget."""
  n_in, n_tg, _ = draw_lengths(setting.dist, 'train')
  return {
    'inputs_cut': float((n_in + 1 > setting.inputs - PROMPT).mean()),
    'targets_cut': float((n_tg + 1 > setting.targets).mean()),
  }


def network_config(model: str, prompt_length: int, **tuning):
  """t5pt T5Config of --model's shapes (bench/train_step.SHARED_SIZES), dropout 0."""
  from t5pt.model import network

  return network.T5Config(
    **train_step.SHARED_SIZES,
    **MODELS[model],
    dropout_rate=0.0,
    prompt_length=prompt_length,
    **tuning,
  )


def init_params(model: str):
  """(nested prompt-tuning trainable, nested frozen) float32 parameters of --model."""
  import flax.linen as nn
  import jax

  from t5pt.model import models
  from t5pt.model import network
  from t5pt.runtime import partitioning

  module = models.EncoderDecoderModel(network_config(model, PROMPT))
  params = partitioning.flatten(nn.unbox(module.init(jax.random.PRNGKey(0), 16, 8)))
  trainable, frozen = partitioning.split_trainable(list(params), [network.PROMPT_PATH])
  pick = lambda paths: partitioning.unflatten({k: params[k] for k in paths})  # noqa: E731
  return pick(trainable), pick(frozen)


class StepRunner:
  """t5pt's jitted prompt-tuning training step (as bench/train_step.py runs it: Adafactor,
  donated state) cycling through a fixed list of batches."""

  def __init__(self, model: str, params, batches: list[dict]):
    import jax

    from t5pt.model import models
    from t5pt.model.steps import build_train_step
    from t5pt.training import optimizers

    trainable, self.frozen = params
    self.trainable = jax.tree.map(lambda x: x.copy(), trainable)  # the step donates it
    opt = optimizers.adafactor()
    self.opt_state = jax.jit(opt.transform.init)(self.trainable)
    module = models.EncoderDecoderModel(network_config(model, PROMPT))
    self.step_fn = jax.jit(
      build_train_step(module, opt.transform, jax.random.PRNGKey(1)), donate_argnums=(0, 1)
    )
    self.batches = [jax.device_put(b) for b in batches]
    self.index, self.metrics = 0, None

  def timed_step(self) -> float:
    """Runs one step to completion; returns its wall time in seconds."""
    import jax

    batch = self.batches[self.index % len(self.batches)]
    start = time.perf_counter()
    self.trainable, self.opt_state, self.metrics = self.step_fn(
      self.trainable, self.opt_state, self.frozen, batch, self.index
    )
    jax.block_until_ready((self.trainable, self.metrics))
    self.index += 1
    return time.perf_counter() - start


def time_pair(runners: dict[bool, StepRunner], steps: int, warmup: int = 2) -> dict:
  """{pack: timing} of the unpacked and packed steps, timed alternately so a burst of load
  on the shared machine hits both alike. Like bench/train_step.time_steps: `warmup`
  untimed steps each (the first compiles), then steps/s = 1 / median step time."""
  for runner in runners.values():
    for _ in range(warmup):
      runner.timed_step()
  times = {pack: [] for pack in runners}
  for _ in range(steps):
    for pack, runner in runners.items():
      times[pack].append(runner.timed_step())
  return {
    pack: {
      'steps_per_s': 1 / float(np.median(t)),
      'step_min_s': min(t),
      'step_max_s': max(t),
    }
    for pack, t in times.items()
  }


def measure(task: str, setting: Setting, args, params) -> list[dict]:
  """The setting's two table rows (unpacked, packed): batch statistics, train-step speed."""
  rows, batches = [], {}
  for pack in (False, True):
    start = time.perf_counter()
    batches[pack] = sample_batches(task, setting, pack, args.batch, args.batches)
    stats = batch_stats(batches[pack])
    row = {'setting': setting, 'pack': pack, **stats, **truncated(setting)}
    rows.append({**row, 'pipeline_s': time.perf_counter() - start})
  if args.steps:
    runners = {pack: StepRunner(args.model, params, b) for pack, b in batches.items()}
    for row, timing in zip(rows, time_pair(runners, args.steps).values()):
      row.update(timing)
      row['tokens_per_s'] = row['tokens'] * row['steps_per_s']
      row['examples_per_s'] = row['examples'] * row['steps_per_s']
  return rows


def print_table(rows: list[dict]) -> None:
  """The markdown table; ratio = packed / unpacked real tokens/s of the same setting."""
  unpacked = {r['setting']: r for r in rows if not r['pack']}
  print(
    '| distribution | inputs (+prompt) / targets | binds | cut in/tg | pack | examples/batch | '
    'inputs fill | targets fill | padding efficiency | steps/s | real tokens/s | '
    'examples/s | ratio |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    s, base = r['setting'], unpacked.get(r['setting'])
    speed = ('steps_per_s', 'tokens_per_s', 'examples_per_s')
    timed = all(k in r for k in speed)
    ratio = (
      f"x{r['tokens_per_s'] / base['tokens_per_s']:.2f}"
      if timed and base and r['pack']
      else f"(x{r['efficiency'] / base['efficiency']:.2f} eff.)"
      if base and r['pack']
      else ''
    )
    cells = (
      f"{r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['examples_per_s']:.1f}"
      if timed
      else '- | - | -'
    )
    print(
      f"| {s.dist} | {s.label} | {s.note} | {100 * r['inputs_cut']:.0f}%/"
      f"{100 * r['targets_cut']:.0f}% | {r['pack']} | {r['examples']:.1f} | "
      f"{100 * r['inputs_fill']:.0f}% | {100 * r['targets_fill']:.0f}% | "
      f"{100 * r['efficiency']:.1f}% | {cells} | {ratio} |"
    )


def one_pass(task: str, lengths: dict, prompt_length: int, pack: bool, rows: int = -1) -> dict:
  """The first `rows` (default all) converted rows of one unshuffled pass over the
  validation split, stacked: {feature: [rows, length]}."""
  from t5pt.runtime import data

  ds = data.get_dataset(
    task, lengths, 'validation', prompt_length=prompt_length, shuffle=False, repeat=False, pack=pack
  )
  found = list(ds.take(rows).as_numpy_iterator())
  return {k: np.stack([r[k] for r in found]) for k in found[0]}


def check_truncation(task: str, setting: Setting) -> str:
  """Whether packing keeps the same examples and tokens as padding over one pass, and
  whether those are the drawn lengths (+ EOS) cut to the budget."""
  counts = {}
  for pack in (False, True):
    rows = one_pass(task, setting.lengths, PROMPT, pack)
    inputs, targets = rows['encoder_input_tokens'], rows['decoder_target_tokens']
    counts[pack] = (examples_in(rows), int((inputs > 0).sum()), int((targets > 0).sum()))
  n_in, n_tg, _ = draw_lengths(setting.dist, 'validation')
  budget_in, budget_tg = setting.inputs - PROMPT, setting.targets
  expected = (
    len(n_in),
    int(np.minimum(n_in + 1, budget_in).sum()),
    int(np.minimum(n_tg + 1, budget_tg).sum()),
  )
  verdict = 'identical' if counts[False] == counts[True] == expected else 'DIFFERENT'
  return (
    f'{setting.dist} {setting.label}: {(n_in + 1 > budget_in).sum()} inputs and '
    f'{(n_tg + 1 > budget_tg).sum()} targets of {len(n_in)} longer than the budget; '
    '(examples, input tokens, target tokens): '
    f'unpacked {counts[False]}, packed {counts[True]}, drawn and cut {expected}: {verdict}'
  )


def first_examples(task: str, lengths: dict, prompt_length: int, rows: int):
  """(packed batch [rows, ...], unpacked batch [examples, ...]) of the same first
  examples of the validation split (packing keeps their order)."""
  packed = one_pass(task, lengths, prompt_length, True, rows)
  return packed, one_pass(task, lengths, prompt_length, False, examples_in(packed))


def token_losses(module, params, batch: dict) -> np.ndarray:
  """[real target tokens] cross-entropy of `batch`, row-major (packing keeps the order)."""
  from t5pt.model import models

  logits = module.logits(params, batch)
  loss, _ = models.cross_entropy(logits, batch['decoder_target_tokens'], 0.0, 0.0)
  return np.asarray(loss)[batch['decoder_target_tokens'] > 0]


def given_logits_model(factor: str):
  """models.EncoderDecoderModel whose `logits` are the parameters passed in (loss,
  weights and normalisation are models.py's own), so the gradient with respect to them
  shows each target token's weight in the loss."""
  from t5pt.model import models

  class GivenLogits(models.EncoderDecoderModel):
    def __init__(self):  # no network: only the loss is used
      self.loss_config = models.LossConfig(z_loss=0.0, loss_normalizing_factor=factor)

    def logits(self, params, batch, dropout_rng=None):
      return params

  return GivenLogits()


def example_weights(batch: dict, factor: str) -> np.ndarray:
  """[examples] each example's share of the loss under `factor` (they sum to 1 for the
  averaging factors): d loss / d logit of the target, at uniform 2-way logits."""
  import jax
  import jax.numpy as jnp

  real = batch['decoder_target_tokens'] > 0
  two_way = {**batch, 'decoder_target_tokens': real.astype(np.int32)}  # padding -> class 0
  model = given_logits_model(factor)
  loss = lambda logits: model.loss_and_metrics(logits, two_way)[0]  # noqa: E731
  grad = jax.grad(loss)(jnp.zeros(real.shape + (2,), jnp.float32))
  token_weight = -2.0 * np.asarray(grad[..., 1]) * real  # d(-log 1/2)/d logit = -1/2
  segments = batch.get('decoder_segment_ids', real.astype(np.int32))
  rows = np.arange(real.shape[0])[:, None] * (real.shape[1] + 1) + segments
  ids = rows[real]
  return np.bincount(np.unique(ids, return_inverse=True)[1], token_weight[real])


def check_loss_weights(task: str, setting: Setting, rows: int) -> list[str]:
  """How much each example weighs in the loss, packed relative to unpacked."""
  packed, unpacked = first_examples(task, setting.lengths, PROMPT, rows)
  lines = []
  for factor in ('NUM_REAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE'):
    ratio = example_weights(packed, factor) / example_weights(unpacked, factor)
    lines.append(
      f'  {factor}: an example weighs x{ratio.min():.3f} to x{ratio.max():.3f} of its '
      f'unpacked weight ({len(ratio)} examples in {rows} packed rows)'
    )
  return lines


# Tuning methods whose packed and unpacked losses are compared: T5Config fields.
VARIANTS = {
  'no prompt (full FT, LoRA, IA3)': {},
  'deep prompt (prefix 16 + decoder prefix 16)': dict(prefix_length=16, decoder_prefix_length=16),
  f'prompt P={PROMPT}': dict(prompt_length=PROMPT),
}


def check_equivalence(task: str, setting: Setting, model: str, rows: int) -> list[str]:
  """Per-token losses of the same examples packed vs not (the first example of a row vs
  the later ones) for each of VARIANTS, at a random init (an indication of size only
  where they differ)."""
  import flax.linen as nn
  import jax

  from t5pt.model import models

  lines = []
  for name, tuning in VARIANTS.items():
    cfg = network_config(model, **{'prompt_length': 0, **tuning})
    p = cfg.prompt_length
    module = models.EncoderDecoderModel(cfg)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), 16, 8))
    lengths = {'inputs': setting.inputs - PROMPT + p, 'targets': setting.targets}
    packed, unpacked = first_examples(task, lengths, p, rows)
    diff = np.abs(token_losses(module, params, packed) - token_losses(module, params, unpacked))
    segment = packed['decoder_segment_ids'][packed['decoder_target_tokens'] > 0]
    first, later = diff[segment == 1], diff[segment > 1]
    lines.append(
      f'{name}: per-token loss |packed - unpacked| mean {first.mean():.1e} (max '
      f'{first.max():.1e}) on the first example of a row, {later.mean():.1e} (max '
      f'{later.max():.1e}) on the later ones ({examples_in(packed)} examples in {rows} rows)'
    )
  return lines


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=5, help='timed steps per row (0: none)')
  parser.add_argument('--batches', type=int, default=50, help='batches sampled per row')
  parser.add_argument('--batch', type=int, default=8, help='rows per batch')
  parser.add_argument('--model', default='mini', choices=sorted(MODELS), help='T5 1.1 shapes')
  parser.add_argument('--only', default='', help='comma list of distributions to run')
  args = parser.parse_args()
  print('load average before: %.2f %.2f %.2f' % os.getloadavg(), flush=True)
  tasks = register_tasks()
  params = init_params(args.model)
  print(
    f'T5 1.1 shapes {args.model} {MODELS[args.model]}, vocab 32128, prompt tuning P={PROMPT}, '
    f'batch {args.batch} rows, {args.batches} batches per row, {args.steps} timed steps',
    flush=True,
  )
  only = set(args.only.split(',')) if args.only else set(DISTRIBUTIONS)
  rows = []
  for setting in (s for s in SETTINGS if s.dist in only):
    start = time.perf_counter()
    rows += measure(tasks[setting.dist], setting, args, params)
    print(
      f'  {setting.dist} {setting.label}: {time.perf_counter() - start:.0f} s',
      file=sys.stderr,
      flush=True,
    )
  print_table(rows)
  print('\ntruncation, one pass (TASK_FEATURE_LENGTHS trims each example the same in both):')
  for setting in (SETTINGS[2], SETTINGS[3]):
    print(check_truncation(tasks[setting.dist], setting))
  for setting, rows_ in ((SETTINGS[2], 8), (SETTINGS[3], 16)):
    print(f'\nsame examples packed vs unpacked, {setting.dist} {setting.label}, untrained model:')
    print('\n'.join(check_equivalence(tasks[setting.dist], setting, args.model, rows_)))
    print("each example's share of the loss (models.loss_and_metrics' gradient):")
    print('\n'.join(check_loss_weights(tasks[setting.dist], setting, rows_)))
  print('load average after: %.2f %.2f %.2f' % os.getloadavg())
  return 0


if __name__ == '__main__':
  sys.exit(main())
