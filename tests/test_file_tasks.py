"""Tasks from users' files: formats, splits, malformed records, and file -> prompt -> decodes."""

import json

import pytest
import seqio

from t5pt.runtime import data
from t5pt.runtime.errors import UserError
from tasks import files, templates
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


BOM = '\ufeff'.encode()  # UTF-8 byte-order mark, as spreadsheets start an export.


@pytest.mark.parametrize('extension, delimiter', [('csv', ','), ('tsv', '\t')])
def test_quoted_line_breaks_crlf_and_a_byte_order_mark(tmp_path, extension, delimiter):
  rows = [
    ('inputs', 'targets'),
    ('"first line\nsecond line"', 'a'),  # Lines 2-3.
    ('"crlf\r\ninside"', '"b"'),  # Lines 4-5.
    ('plain', 'c'),  # Line 6.
  ]
  text = ''.join(delimiter.join(row) + '\r\n' for row in rows)
  path = tmp_path / f'sheet.{extension}'
  path.write_bytes(BOM + text.encode())
  name = f'sheet_{extension}'
  files.register_file_task(name, split_paths={'train': str(path)}, vocabulary=BYTES)
  assert _texts(name, 'train') == [
    ('first line\nsecond line', 'a'),
    ('crlf\r\ninside', 'b'),
    ('plain', 'c'),
  ]
  # Errors name the line a record starts on, counting the line breaks inside fields.
  bad = delimiter.join(['"two\nlines"', 'x', 'y']) + '\r\n'
  path.write_bytes(BOM + (text + bad).encode())
  with pytest.raises(UserError, match=rf'sheet.{extension}:7: 3 columns but the header has 2'):
    files.register_file_task(name, split_paths={'train': str(path)}, vocabulary=BYTES)


def test_a_quote_that_never_closes_is_an_error_not_a_swallowed_file(tmp_path):
  path = tmp_path / 'open.csv'
  path.write_text('inputs,targets\na,b\n"c,d\ne,f\ng,h\n')
  with pytest.raises(UserError, match=r'open.csv:3: a quoted field is never closed'):
    files.register_file_task('open_quote', split_paths={'train': str(path)}, vocabulary=BYTES)
  files.register_file_task(
    'open_quote', split_paths={'train': str(path)}, vocabulary=BYTES, on_error='skip'
  )
  assert _texts('open_quote', 'train') == [('a', 'b')] and files.skipped['open_quote'] == 1

  path.write_text('inputs,targets\n"a" b,c\nd,e\n')
  with pytest.raises(UserError, match=r'open.csv:2: a quoted field has text after its closing'):
    files.register_file_task('open_quote', split_paths={'train': str(path)}, vocabulary=BYTES)
  files.register_file_task(
    'open_quote', split_paths={'train': str(path)}, vocabulary=BYTES, on_error='skip'
  )
  assert _texts('open_quote', 'train') == [('d', 'e')]

  path.write_text('inputs,inputs,targets\na,b,c\n')
  with pytest.raises(UserError, match=r"open.csv:1: the header names column\(s\) \['inputs'\]"):
    files.register_file_task('open_quote', split_paths={'train': str(path)}, vocabulary=BYTES)


def test_jsonl_and_alpaca_with_crlf_and_a_byte_order_mark(tmp_path):
  records = [{'inputs': 'a', 'targets': 'b'}, {'inputs': 'c\u2028d', 'targets': 'e'}]
  jsonl = tmp_path / 'bom.jsonl'
  lines = [json.dumps(r, ensure_ascii=False) for r in records]  # U+2028 written raw.
  jsonl.write_bytes(BOM + '\r\n\r\n'.join(lines).encode() + b'\r\n')
  files.register_file_task('bom_jsonl', split_paths={'train': str(jsonl)}, vocabulary=BYTES)
  assert _texts('bom_jsonl', 'train') == [('a', 'b'), ('c\u2028d', 'e')]
  jsonl.write_bytes(BOM + b'{"inputs": "a", "targets": "b"}\r\n\r\n{"inputs": \r\n')
  with pytest.raises(UserError, match=r'bom.jsonl:3: not valid JSON'):
    files.register_file_task('bom_jsonl', split_paths={'train': str(jsonl)}, vocabulary=BYTES)

  alpaca = tmp_path / 'bom.json'
  alpaca.write_bytes(BOM + json.dumps(ALPACA, indent=1).replace('\n', '\r\n').encode())
  files.register_file_task('bom_alpaca', split_paths={'train': str(alpaca)}, vocabulary=BYTES)
  assert _texts('bom_alpaca', 'train') == [
    ('Give the largest letter.\n\ncab', 'c'),
    ('Say hi.', 'hi'),
  ]


ALPACA = [
  {'instruction': 'Give the largest letter.', 'input': 'cab', 'output': 'c', 'example_input': 'ab'},
  {'instruction': 'Say hi.', 'input': '', 'output': 'hi', 'example_input': 'yo'},
]


def _alpaca(tmp_path):
  path = tmp_path / 'alpaca.json'
  path.write_text(json.dumps(ALPACA))
  return {'train': str(path)}


def test_alpaca_plain_and_stanford_prompts(tmp_path):
  files.register_file_task('alpaca', split_paths=_alpaca(tmp_path), vocabulary=BYTES)
  assert _texts('alpaca', 'train') == [('Give the largest letter.\n\ncab', 'c'), ('Say hi.', 'hi')]
  files.register_file_task(
    'alpaca_stanford', split_paths=_alpaca(tmp_path), vocabulary=BYTES, alpaca_prompt='stanford'
  )
  assert _texts('alpaca_stanford', 'train') == [
    (
      'Below is an instruction that describes a task, paired with an input that provides '
      'further context. Write a response that appropriately completes the request.\n\n'
      '### Instruction:\nGive the largest letter.\n\n### Input:\ncab\n\n### Response:',
      'c',
    ),
    (
      'Below is an instruction that describes a task. Write a response that appropriately '
      'completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:',
      'hi',
    ),
  ]
  with pytest.raises(
    UserError, match=r"alpaca_prompt='vicuna' is not one of \['plain', 'stanford'\]"
  ):
    files.register_file_task(
      'alpaca_x', split_paths=_alpaca(tmp_path), vocabulary=BYTES, alpaca_prompt='vicuna'
    )


def test_extra_alpaca_keys_reach_a_fields_function(tmp_path):
  files.register_file_task(
    'alpaca_extra',
    split_paths=_alpaca(tmp_path),
    vocabulary=BYTES,
    fields=lambda r: {
      'inputs': files.alpaca_inputs(r) + f"\n\nExample: {r['example_input']}",
      'targets': r['output'],
    },
  )
  assert _texts('alpaca_extra', 'train') == [
    ('Give the largest letter.\n\ncab\n\nExample: ab', 'c'),
    ('Say hi.\n\nExample: yo', 'hi'),
  ]


def _reviews(tmp_path, name='reviews.tsv', rows=(('good film', '1'), ('dull plot', '0'))):
  path = tmp_path / name
  path.write_text('sentence\tlabel\n' + ''.join(f'{s}\t{l}\n' for s, l in rows))
  return str(path)


LABELS = {'0': 'negative', '1': 'positive'}


def test_targets_map_turns_labels_into_words(tmp_path):
  files.register_file_task(
    'reviews',
    split_paths={'train': _reviews(tmp_path)},
    vocabulary=BYTES,
    inputs_field='sentence',
    targets_field='label',
    targets_map=LABELS,
  )
  assert _texts('reviews', 'train') == [('good film', 'positive'), ('dull plot', 'negative')]
  numbers = _jsonl(tmp_path / 'numbers.jsonl', [{'inputs': 'x', 'targets': 0}])  # JSON 0 -> '0'.
  files.register_file_task(
    'numbers', split_paths={'train': numbers}, vocabulary=BYTES, targets_map=LABELS
  )
  assert _texts('numbers', 'train') == [('x', 'negative')]


def test_a_value_missing_from_targets_map_names_file_line_and_keys_or_is_skipped(tmp_path):
  path = _reviews(tmp_path, rows=(('good film', '1'), ('meh', '2'), ('dull plot', '0')))
  settings = dict(
    split_paths={'train': path},
    vocabulary=BYTES,
    inputs_field='sentence',
    targets_field='label',
    targets_map=LABELS,
  )
  with pytest.raises(
    UserError,
    match=r"reviews.tsv:3: label value '2' is not a key of targets_map \(keys: \['0', '1'\]\)",
  ):
    files.register_file_task('unmapped', **settings)
  files.register_file_task('unmapped', **settings, on_error='skip')
  assert files.skipped['unmapped'] == 1
  assert _texts('unmapped', 'train') == [('good film', 'positive'), ('dull plot', 'negative')]


def test_a_fields_function_builds_drops_and_fails_at_its_record(tmp_path):
  path = _jsonl(
    tmp_path / 'nli.jsonl',
    [
      {'premise': 'p0', 'hypothesis': 'h0', 'label': 0},
      {'premise': 'p1', 'hypothesis': 'h1', 'label': -1},
      {'premise': 'p2', 'hypothesis': 'h2', 'label': 2},
    ],
  )

  def nli(record):
    if record['label'] < 0:
      return None
    return {
      'inputs': f"premise: {record['premise']} hypothesis: {record['hypothesis']}",
      'targets': ['entailment', 'neutral', 'contradiction'][record['label']],
    }

  files.register_file_task('nli', split_paths={'train': path}, vocabulary=BYTES, fields=nli)
  assert _texts('nli', 'train') == [
    ('premise: p0 hypothesis: h0', 'entailment'),
    ('premise: p2 hypothesis: h2', 'contradiction'),
  ]
  assert (files.dropped['nli'], files.skipped['nli']) == (1, 0)
  with pytest.raises(UserError, match=r"nli.jsonl:3: the fields= function raised IndexError"):
    files.register_file_task(
      'nli_bad',
      split_paths={'train': path},
      vocabulary=BYTES,
      fields=lambda r: {'inputs': r['premise'], 'targets': ['yes', 'no'][r['label']]},  # 2: no.
    )
  with pytest.raises(UserError, match=r"nli.jsonl:1: the fields= function returned \('p0', 0\)"):
    files.register_file_task(
      'nli_bad',
      split_paths={'train': path},
      vocabulary=BYTES,
      fields=lambda r: (r['premise'], r['label']),
    )


def test_options_that_conflict_are_refused(tmp_path):
  reviews = {'train': _reviews(tmp_path)}
  with pytest.raises(
    UserError, match=r"fields= builds inputs and targets itself, so drop targets_map="
  ):
    files.register_file_task(
      'x', split_paths=reviews, vocabulary=BYTES, targets_map=LABELS, fields=lambda r: None
    )
  with pytest.raises(UserError, match=r"has fixed keys .* drop inputs_field="):
    files.register_file_task(
      'x', split_paths=_alpaca(tmp_path), vocabulary=BYTES, inputs_field='instruction'
    )
  with pytest.raises(UserError, match=r"alpaca_prompt= applies to Alpaca JSON files, not the tsv"):
    files.register_file_task('x', split_paths=reviews, vocabulary=BYTES, alpaca_prompt='plain')
  with pytest.raises(UserError, match=r"targets_map must map .* got \{0: 'negative'\}"):
    files.register_file_task(
      'x', split_paths=reviews, vocabulary=BYTES, targets_map={0: 'negative'}
    )


def test_file_records_with_flan_templates(tmp_path):
  rows = [(f'film {i} was {"good" if i % 2 else "dull"}', str(i % 2)) for i in range(8)]
  source = files.file_source(
    split_paths={
      'train': _reviews(tmp_path, 'train.tsv', rows),
      'validation': _reviews(tmp_path, 'dev.tsv', [('a fine film', '1')]),
    }
  )
  words = list(LABELS.values())
  spec = templates.TaskSpec(
    name='file_reviews',
    source=source,
    fields=lambda ex: {
      'sentence': ex['sentence'],
      'answer': words[int(ex['label'])],
      'options': words,
    },
    templates=[templates.Template('{sentence}\n\nIs this review positive or negative?{options_}')],
  )
  names = templates.register(spec, BYTES, num_shots=2)
  assert names == [f'file_reviews_{v}' for v in ('zsopt', 'zsnoopt', 'fsopt', 'fsnoopt')]
  question = 'a fine film\n\nIs this review positive or negative?'
  assert _texts('file_reviews_zsopt', 'validation') == [
    (question + '\n\nOPTIONS:\n- negative\n- positive', 'positive')
  ]
  assert _texts('file_reviews_zsnoopt', 'validation') == [(question, 'positive')]
  [(inputs, targets)] = _texts('file_reviews_fsnoopt', 'validation')
  *shots, query = inputs.split(templates.FEW_SHOT_SEPARATOR)
  assert targets == 'positive' and question in query and len(shots) == 2
  for shot in shots:
    sentence = shot.split('\n\n')[0].split(': ')[-1]
    assert shot.endswith(words[int(dict(rows)[sentence])])


def test_file_source_passes_every_key_as_text(tmp_path):
  path = _jsonl(
    tmp_path / 'raw.jsonl',
    [{'text': 'a', 'n': 1, 'ok': True, 'tags': ['x', 'y'], 'none': None}, {'text': 'b'}],
  )
  source = files.file_source(split_paths={'train': path})
  assert list(source.get_dataset('train', shuffle=False).as_numpy_iterator()) == [
    {'text': b'a', 'n': b'1', 'ok': b'true', 'tags': b'["x", "y"]', 'none': b''},
    {'text': b'b', 'n': b'', 'ok': b'', 'tags': b'', 'none': b''},
  ]


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
  """The "Adding your own task" walk-through of docs/tasks.md, on the tiny synthetic base."""
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
