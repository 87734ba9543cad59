"""Flan-style capped mixtures, weighted submixtures, and `python -m tasks.show`."""

import json

import pytest
import seqio
import tensorflow as tf

from t5pt.runtime.errors import UserError
from tasks import files, mixtures
from tests.conftest import run_module

BYTES = seqio.ByteVocabulary()


def _file_task(tmp_path, name, count):
  path = tmp_path / f'{name}.jsonl'
  path.write_text(
    ''.join(json.dumps({'inputs': f'x{i}', 'targets': 'y'}) + '\n' for i in range(count))
  )
  files.register_file_task(name, split_paths={'train': str(path)}, vocabulary=BYTES)


def test_capped_mixture_rates_equal_capped_example_counts(tmp_path):
  for name, count in (('small_t', 10), ('medium_t', 40), ('large_t', 90)):
    _file_task(tmp_path, name, count)
  mixture = mixtures.register_capped_mixture('capped', ['small_t', 'medium_t', 'large_t'], cap=50)
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
    'small_t': 10.0,
    'medium_t': 40.0,
    'large_t': 50.0,
  }
  uncapped = mixtures.register_capped_mixture('uncapped', ['small_t', 'large_t'], cap=None)
  assert {t.name: uncapped.get_rate(t) for t in uncapped.tasks} == {
    'small_t': 10.0,
    'large_t': 90.0,
  }
  assert mixtures.FLAN_EXAMPLE_CAP == 3000
  assert mixtures.capped_rates(['large_t']) == {'large_t': 90.0}


def test_weighted_mixture_of_submixtures(tmp_path):
  for name, count in (('a_t', 10), ('b_t', 20), ('c_t', 30)):
    _file_task(tmp_path, name, count)
  mixtures.register_capped_mixture('ab', ['a_t', 'b_t'])
  top = mixtures.register_weighted_mixture('top', {'ab': 0.75, 'c_t': 0.25})
  rates = {t.name: top.get_rate(t) for t in top.tasks}
  # a and b share ab's 0.75 in proportion to their sizes (10:20); c keeps 0.25.
  assert rates == pytest.approx({'a_t': 0.25, 'b_t': 0.5, 'c_t': 0.25})
  with pytest.raises(UserError, match='non-negative'):
    mixtures.register_weighted_mixture('bad', {'a_t': -1.0})


def test_a_task_without_example_counts_cannot_be_mixed_by_size():
  seqio.TaskRegistry.remove('uncounted') if 'uncounted' in seqio.TaskRegistry.names() else None
  seqio.TaskRegistry.add(
    'uncounted',
    source=seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
        {'inputs': ['a'], 'targets': ['b']}
      ),
      splits=('train',),
    ),
    preprocessors=[seqio.preprocessors.tokenize],
    output_features={'inputs': seqio.Feature(BYTES), 'targets': seqio.Feature(BYTES)},
  )
  with pytest.raises(UserError, match="does not declare how many 'train' examples"):
    mixtures.register_capped_mixture('nope', ['uncounted'])


def test_show_prints_examples_as_the_model_sees_them_and_mixture_rates():
  result = run_module(
    'tasks.show',
    'synthetic_pretrain_mixture',
    '--module=tasks.synthetic',
    '--num=3',
    '--inputs=8',
    '--targets=4',
    '--prompt_length=4',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  assert 'mixture synthetic_pretrain_mixture: 4 tasks' in out
  assert out.count('share  25.0%') == 4
  assert out.count('--- example') == 3
  assert sum(f"'{op}: " in out for op in ('first', 'last', 'min', 'max')) >= 1
  assert 'truncated to 4' in out  # "max: abcdef" + EOS is longer than 8 - 4 positions.
  assert 'encoder budget: 8 positions = 4 prompt + 4 input tokens' in out
  unknown = run_module('tasks.show', 'no_such_task')
  assert unknown.returncode == 2 and 'is not a registered task' in unknown.stderr
