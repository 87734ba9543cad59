"""Tasks from users' files: formats, splits, malformed records, and file -> prompt -> decodes."""

import json

import pytest
import seqio

from t5pt import data
from t5pt.errors import UserError
from tasks import files
from tests.conftest import train_in_process
from tests.test_infer import infer_in_process

BYTES = seqio.ByteVocabulary()


def _jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def _texts(task_name, split):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(None, split=split, shuffle=False)
  return [
    (ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode())
    for ex in ds.as_numpy_iterator()
  ]


def test_jsonl_with_field_mapping_and_a_deterministic_split_ratio(tmp_path):
  path = _jsonl(
    tmp_path / 'qa.jsonl', [{'question': f'q{i}', 'answer': f'a{i}', 'id': i} for i in range(20)]
  )
  ratio = {'train': 0.75, 'validation': 0.25}
  files.register_file_task(
    'qa',
    path=path,
    split_ratio=ratio,
    vocabulary=BYTES,
    inputs_field='question',
    targets_field='answer',
  )
  train, validation = _texts('qa', 'train'), _texts('qa', 'validation')
  assert (len(train), len(validation)) == (15, 5)
  assert sorted(train + validation) == sorted((f'q{i}', f'a{i}') for i in range(20))
  files.register_file_task(
    'qa',
    path=path,
    split_ratio=ratio,
    vocabulary=BYTES,
    inputs_field='question',
    targets_field='answer',
  )
  assert _texts('qa', 'validation') == validation  # Same seed, same split.
  batch = next(
    data.iterate_batches(
      data.get_dataset('qa', {'inputs': 8, 'targets': 4}, 'train', shuffle=False),
      4,
      drop_remainder=True,
    )
  )
  assert batch['encoder_input_tokens'].shape == (4, 8)


@pytest.mark.parametrize('extension, delimiter', [('csv', ','), ('tsv', '\t')])
def test_csv_and_tsv_with_one_file_per_split(tmp_path, extension, delimiter):
  for split, rows in (('train', [('cab', 'c'), ('"x, y"', 'y')]), ('validation', [('ab', 'b')])):
    lines = [f'inputs{delimiter}targets'] + [f'{i}{delimiter}{t}' for i, t in rows]
    (tmp_path / f'{split}.{extension}').write_text('\n'.join(lines) + '\n')
  files.register_file_task(
    f'table_{extension}',
    vocabulary=BYTES,
    split_paths={s: str(tmp_path / f'{s}.{extension}') for s in ('train', 'validation')},
  )
  assert _texts(f'table_{extension}', 'train') == [('cab', 'c'), ('x, y', 'y')]  # Unquoted.


def test_alpaca_json_joins_instruction_and_input(tmp_path):
  path = tmp_path / 'alpaca.json'
  path.write_text(
    json.dumps(
      [
        {'instruction': 'Give the largest letter.', 'input': 'cab', 'output': 'c'},
        {'instruction': 'Say hi.', 'input': '', 'output': 'hi'},
      ]
    )
  )
  files.register_file_task('alpaca', split_paths={'train': str(path)}, vocabulary=BYTES)
  assert _texts('alpaca', 'train') == [('Give the largest letter.\n\ncab', 'c'), ('Say hi.', 'hi')]


def test_malformed_records_name_file_and_line_or_are_counted_when_skipping(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text(
    '{"inputs": "a", "targets": "b"}\n{"inputs": "c", "targets": "d"}\n'
    '{"inputs": "e", "targets": \n{"inputs": "f"}\n'
    '{"inputs": "g", "targets": "h"}\n'
  )
  with pytest.raises(UserError, match=r'bad.jsonl:3: not valid JSON'):
    files.register_file_task('bad', split_paths={'train': str(path)}, vocabulary=BYTES)
  files.register_file_task(
    'bad', split_paths={'train': str(path)}, vocabulary=BYTES, on_error='skip'
  )
  assert files.skipped['bad'] == 2
  assert _texts('bad', 'train') == [('a', 'b'), ('c', 'd'), ('g', 'h')]

  table = tmp_path / 'bad.csv'
  table.write_text('inputs,targets\na,b\nc,d,e\n')
  with pytest.raises(UserError, match=r"bad.csv:3: 3 columns but the header has 2"):
    files.register_file_task('bad_csv', split_paths={'train': str(table)}, vocabulary=BYTES)
  with pytest.raises(UserError, match=r"bad.jsonl:1: field 'question' is missing"):
    files.register_file_task(
      'bad', split_paths={'train': str(path)}, vocabulary=BYTES, inputs_field='question'
    )


def test_bad_arguments(tmp_path):
  path = _jsonl(tmp_path / 'x.jsonl', [{'inputs': 'a', 'targets': 'b'}])
  with pytest.raises(UserError, match='needs split_ratio'):
    files.register_file_task('x', path=path, vocabulary=BYTES)
  with pytest.raises(UserError, match='have no examples'):
    files.register_file_task(
      'x', path=path, vocabulary=BYTES, split_ratio={'train': 1.0, 'validation': 0.0}
    )
  with pytest.raises(UserError, match='Cannot tell the format'):
    files.register_file_task(
      'x', split_paths={'train': str(tmp_path / 'x.parquet')}, vocabulary=BYTES
    )


def test_from_a_jsonl_file_to_a_trained_prompt_and_decoded_outputs(tmp_path, base_checkpoint):
  """The README's "Adding your own task" walk-through, on the tiny synthetic base."""
  letters = 'abcdefgh'
  records = [
    {'text': ''.join(letters[(i * 7 + j * 3) % 8] for j in range(3 + i % 4))} for i in range(200)
  ]
  for r in records:
    r['label'] = max(r['text'])
  path = _jsonl(tmp_path / 'largest.jsonl', records)
  files.register_file_task(
    'largest_letter',
    path=path,
    vocabulary=BYTES,
    inputs_field='text',
    targets_field='label',
    split_ratio={'train': 0.8, 'validation': 0.2},
  )
  model_dir = tmp_path / 'run'
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    str(model_dir),
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    MIXTURE_OR_TASK_NAME='largest_letter',
    MIXTURE_OR_TASK_MODULE=None,
    TRAIN_STEPS=30,
    BATCH_SIZE=16,
    EVAL_PERIOD=1000,
    CHECKPOINT_PERIOD=30,
    INFER_EVAL=True,
  )
  assert summary['infer_eval']['largest_letter']['exact_match'] >= 50.0
  (tmp_path / 'new.jsonl').write_text('{"inputs": "abh"}\n{"inputs": "fcd"}\n')
  out = infer_in_process(
    tmp_path / 'out',
    CHECKPOINT_PATH=str(model_dir),
    INPUT_FILE=str(tmp_path / 'new.jsonl'),
    MIXTURE_OR_TASK_NAME='largest_letter',
    BATCH_SIZE=2,
  )
  with open(out) as f:
    assert [json.loads(l)['inputs'] for l in f] == ['abh', 'fcd']
