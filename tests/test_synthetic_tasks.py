"""Tests for the synthetic seqio tasks in tasks/synthetic.py."""

import numpy as np
import pytest
import seqio

from tasks import synthetic

SEQUENCE_LENGTH = {'inputs': 32, 'targets': 16}
EOS_ID = 1
ALL_TASKS = [*synthetic.INSTRUCTED_TASKS, *synthetic.HELDOUT_TASKS]


def _decoded(task_name, split='validation', limit=20):
  """First `limit` (inputs, targets) strings of a task, decoded from tokens."""
  ds = seqio.get_mixture_or_task(task_name).get_dataset(SEQUENCE_LENGTH, split=split, shuffle=False)
  vocab = synthetic.VOCABULARY
  return [
    (vocab.decode(ex['inputs'].tolist()), vocab.decode(ex['targets'].tolist()))
    for ex in ds.take(limit).as_numpy_iterator()
  ]


def test_tasks_and_mixture_registered():
  assert set(ALL_TASKS) == {
    'synthetic_first',
    'synthetic_last',
    'synthetic_min',
    'synthetic_max',
    'synthetic_heldout_first',
    'synthetic_heldout_last',
    'synthetic_heldout_min',
    'synthetic_heldout_max',
  }
  for name in ALL_TASKS:
    assert name in seqio.TaskRegistry.names()
  mixture = seqio.get_mixture_or_task(synthetic.PRETRAIN_MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == sorted(synthetic.INSTRUCTED_TASKS)


def test_reregistration_is_idempotent():
  synthetic._register()
  assert synthetic.HELDOUT_TASK in seqio.TaskRegistry.names()
  assert synthetic.PRETRAIN_MIXTURE in seqio.MixtureRegistry.names()


@pytest.mark.parametrize(
  'op, expected', [('first', 'c'), ('last', 'd'), ('min', 'a'), ('max', 'd')]
)
def test_operations(op, expected):
  assert synthetic.OPERATIONS[op]('cabd') == expected


@pytest.mark.parametrize('task_name', sorted(synthetic.INSTRUCTED_TASKS))
def test_instructed_examples_render(task_name):
  op = synthetic.INSTRUCTED_TASKS[task_name]
  for inputs, targets in _decoded(task_name):
    prefix = f'{op}: '
    assert inputs.startswith(prefix)
    s = inputs[len(prefix) :]
    assert synthetic.MIN_LEN <= len(s) <= synthetic.MAX_LEN
    assert set(s) <= set(synthetic.ALPHABET)
    assert targets == synthetic.OPERATIONS[op](s)


def test_max_example_render():
  inputs, targets = _decoded('synthetic_max', limit=1)[0]
  assert inputs.startswith('max: ')
  assert targets == max(inputs[len('max: ') :])


def test_heldout_examples_have_no_prefix():
  for inputs, targets in _decoded(synthetic.HELDOUT_TASK):
    assert ':' not in inputs and ' ' not in inputs
    assert set(inputs) <= set(synthetic.ALPHABET)
    assert targets == max(inputs)


def test_generation_is_deterministic():
  first = _decoded(synthetic.HELDOUT_TASK, split='train', limit=50)
  synthetic.examples.cache_clear()
  synthetic._strings.cache_clear()
  second = _decoded(synthetic.HELDOUT_TASK, split='train', limit=50)
  assert first == second
  # Different tasks draw different strings.
  other = _decoded('synthetic_first', split='train', limit=50)
  assert [i for i, _ in first] != [i[len('first: ') :] for i, _ in other]


def test_split_sizes():
  for name in ALL_TASKS:
    for split, size in synthetic.NUM_EXAMPLES.items():
      inputs, targets = synthetic.examples(name, split)
      assert len(inputs) == len(targets) == size
  assert seqio.get_mixture_or_task(synthetic.HELDOUT_TASK).num_input_examples('train') == 50_000


@pytest.mark.parametrize('task_name', ALL_TASKS)
def test_validation_disjoint_from_train(task_name):
  train, _ = synthetic.examples(task_name, 'train')
  validation, _ = synthetic.examples(task_name, 'validation')
  assert not set(train) & set(validation)


def test_sequence_accuracy():
  metric = synthetic.sequence_accuracy
  assert metric(['ab', 'cd'], ['ab', 'cd']) == {'sequence_accuracy': 100.0}
  assert metric(['ab', 'cd'], ['ba', 'dc']) == {'sequence_accuracy': 0.0}
  assert metric(['ab', 'cd'], ['ab', 'c']) == {'sequence_accuracy': 50.0}


def test_mixture_yields_tokenized_examples_ending_in_eos():
  ds = seqio.get_mixture_or_task(synthetic.PRETRAIN_MIXTURE).get_dataset(
    SEQUENCE_LENGTH, split='train', shuffle=True, seed=0
  )
  prefixes = set()
  for ex in ds.take(60).as_numpy_iterator():
    for feature in ('inputs', 'targets'):
      tokens = ex[feature]
      assert tokens.dtype == np.int32
      assert tokens[-1] == EOS_ID
      assert EOS_ID not in tokens[:-1] and 0 not in tokens
    inputs = synthetic.VOCABULARY.decode(ex['inputs'].tolist())
    prefixes.add(inputs.split(':')[0])
  assert prefixes == set(synthetic.OPERATIONS)
