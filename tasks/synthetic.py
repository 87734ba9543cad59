"""Synthetic string-manipulation tasks for prompt-tuning demos and tests.

Everything here is generated in code: no downloads, no real dataset text.
Each example is a random lowercase string `s` over ALPHABET with a length in
[MIN_LEN, MAX_LEN], transformed by one of the OPERATIONS.

* `synthetic_<op>` (one per operation) are *instructed* tasks: the inputs
  name the operation (`"max: cab"` -> `"c"`). The mixture
  `synthetic_pretrain_mixture` over all of them teaches a small base model to
  follow the instruction prefix.
* `synthetic_heldout_<op>` (one per operation; `synthetic_heldout_max` is the
  demo's) drop the instruction: the inputs are the bare string (`"cab"` ->
  `"c"`). A frozen base model cannot tell which operation is wanted, but a soft
  prompt trained on the task can learn to play the role of the missing
  `"max: "` prefix; prompts for two held-out tasks serve one model together.

Data is deterministic: every (task, split) draws from its own numpy Generator
seeded with BASE_SEED plus a stable CRC32 offset of the task and split names.
Validation strings never occur in the same task's training split, so
validation accuracy measures generalisation rather than memorisation (with
8 letters almost all short strings are drawn in training, so validation is
dominated by longer strings).

Importing this module registers all tasks and the mixture (re-importing or
reloading replaces the earlier registrations).
"""

import functools
import zlib

import numpy as np
import seqio
import tensorflow as tf

from tasks import mixtures

ALPHABET = 'abcdefgh'
MIN_LEN = 3
MAX_LEN = 8
BASE_SEED = 1234
NUM_EXAMPLES = {'train': 50_000, 'validation': 512}

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
  'inputs': seqio.Feature(VOCABULARY, add_eos=True),
  'targets': seqio.Feature(VOCABULARY, add_eos=True),
}

# Single-letter answers: a ~1M-parameter T5 learns all four in a few hundred CPU steps.
# (Sequence-to-sequence ones such as reverse need far longer: T5's cross-attention has no
# position signal, so alignment must be learned.)
OPERATIONS = {
  'first': lambda s: s[0],
  'last': lambda s: s[-1],
  'min': min,
  'max': max,
}

HELDOUT_OPERATION = 'max'
HELDOUT_TASKS = {f'synthetic_heldout_{op}': op for op in OPERATIONS}
HELDOUT_TASK = f'synthetic_heldout_{HELDOUT_OPERATION}'
PRETRAIN_MIXTURE = 'synthetic_pretrain_mixture'
INSTRUCTED_TASKS = {f'synthetic_{op}': op for op in OPERATIONS}


def sequence_accuracy(targets, predictions):
  """Percentage (0-100) of predictions exactly equal to their targets."""
  if not targets:
    return {'sequence_accuracy': 0.0}
  correct = sum(t == p for t, p in zip(targets, predictions))
  return {'sequence_accuracy': 100.0 * correct / len(targets)}


def _random_strings(rng, count, exclude=frozenset()):
  """Draws `count` random strings, dropping any string in `exclude`."""
  strings = []
  while len(strings) < count:
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=count)
    letters = rng.integers(len(ALPHABET), size=(count, MAX_LEN))
    batch = [''.join(ALPHABET[i] for i in row[:n]) for row, n in zip(letters, lengths)]
    strings += [s for s in batch if s not in exclude]
  return strings[:count]


@functools.lru_cache(maxsize=None)
def _strings(task_name, split):
  """Deterministic strings for (task, split); validation avoids train."""
  seed = BASE_SEED + zlib.crc32(f'{task_name}/{split}'.encode())
  rng = np.random.default_rng(seed)
  exclude = frozenset() if split == 'train' else frozenset(_strings(task_name, 'train'))
  return tuple(_random_strings(rng, NUM_EXAMPLES[split], exclude))


@functools.lru_cache(maxsize=None)
def examples(task_name, split):
  """(inputs, targets) string tuples for a registered synthetic task."""
  strings = _strings(task_name, split)
  if task_name in HELDOUT_TASKS:
    return strings, tuple(OPERATIONS[HELDOUT_TASKS[task_name]](s) for s in strings)
  op = INSTRUCTED_TASKS[task_name]
  return (tuple(f'{op}: {s}' for s in strings), tuple(OPERATIONS[op](s) for s in strings))


def _dataset_fn(task_name):
  """A seqio dataset_fn over the fixed examples of `task_name`.

  The examples are a fixed in-memory list, so `shuffle_files` and `seed` have
  nothing to act on; seqio's own example shuffling still applies.
  """

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    inputs, targets = examples(task_name, split)
    return tf.data.Dataset.from_tensor_slices({'inputs': list(inputs), 'targets': list(targets)})

  return dataset_fn


def _register():
  """(Re-)registers every synthetic task and the pretraining mixture."""
  for task_name in [*INSTRUCTED_TASKS, *HELDOUT_TASKS]:
    if task_name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
      task_name,
      source=seqio.FunctionDataSource(
        _dataset_fn(task_name), splits=tuple(NUM_EXAMPLES), num_input_examples=dict(NUM_EXAMPLES)
      ),
      preprocessors=[
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=OUTPUT_FEATURES,
      metric_fns=[sequence_accuracy],
    )
  mixtures.register_capped_mixture(PRETRAIN_MIXTURE, list(INSTRUCTED_TASKS))


_register()
