r"""Seqio tasks from your own files: JSONL, CSV/TSV or Alpaca JSON, in a few lines.

    from tasks import files
    files.register_file_task(
        'my_task', path='data/my.jsonl', vocabulary='checkpoints/flan-t5-base',
        inputs_field='question', targets_field='answer',
        split_ratio={'train': 0.9, 'validation': 0.1})

Formats (from the extension, `.json` meaning Alpaca, unless `file_format` is given):
  jsonl   one JSON object per line
  csv/tsv a header row naming the columns, then one example per row; read as the csv module
          reads them, so a quoted field ("a, b" or "first line<newline>second line") keeps
          its delimiters and line breaks, and a quote that never closes is an error
  alpaca  a JSON array of {"instruction", "input", "output"} objects (see below)
Line ends may be \n or \r\n, and a UTF-8 byte-order mark at the start (spreadsheet exports
write one) is ignored. Errors name the line a record starts on.

Give either `split_paths` ({'train': ..., 'validation': ...}) or one `path` with a
`split_ratio`: the file's records are shuffled by `seed` and sliced in the ratio's order
before examples are built, so a record lands in the same split whatever is built from it
(here or by `file_source`).

Each example comes from one record (a row's columns, or an object's keys):
  inputs_field, targets_field   the record's text fields (default 'inputs' and 'targets').
  targets_map   replaces the raw targets value, e.g. 0/1 labels by the words that the
                model should write (and that prompts.class_labels initialises from):

    files.register_file_task(
        'reviews', split_paths={'train': 'train.tsv', 'validation': 'dev.tsv'},
        vocabulary='checkpoints/flan-t5-base', inputs_field='sentence', targets_field='label',
        targets_map={'0': 'negative', '1': 'positive'})

                Keys are the values as the file writes them; a JSON number or boolean is
                looked up as its JSON text (label 0 as '0', true as 'true').
  fields        anything else: a function from the record -- every column or key; strings
                for CSV/TSV, JSON values as parsed for JSONL and Alpaca -- to
                {'inputs': str, 'targets': str} (both non-empty), or None to drop the record
                (counted in `dropped`). It replaces the options above and alpaca_prompt:

    def nli(record):
      if record['label'] < 0:  # Unannotated.
        return None
      return {'inputs': f"premise: {record['premise']} hypothesis: {record['hypothesis']}",
              'targets': ['entailment', 'neutral', 'contradiction'][record['label']]}
    files.register_file_task('nli', path='nli.jsonl', split_ratio={'train': 0.9, 'validation': 0.1},
                             vocabulary='checkpoints/flan-t5-base', fields=nli)

                An exception inside the function, or any other return value, stops with the
                record's file:line, whatever `on_error` says: fix the function, or make it
                return None for such records.

Alpaca: targets are "output"; inputs join "instruction" and "input" as `alpaca_prompt` says:
  'plain'     (default) the instruction, then "\n\n" and the input when it is not blank.
  'stanford'  Stanford Alpaca's prompt, as PROMPT_DICT in tatsu-lab/stanford_alpaca's
              train.py writes it (ALPACA_PROMPTS['stanford'] holds both texts):
                Below is an instruction that describes a task, paired with an input that
                provides further context. Write a response that appropriately completes the
                request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:
              and, when the input is blank,
                Below is an instruction that describes a task. Write a response that
                appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n
                ### Response:
              (each one line; no newline after "### Response:", as in train.py).
Other keys of an object (e.g. "example_input") are in neither join: they are dropped. To
use them, pass `fields=`, which sees the whole object; `alpaca_inputs(record, alpaca_prompt)`
gives the join:

    files.register_file_task(
        'instruct', split_paths={'train': 'alpaca_data.json'}, vocabulary=...,
        fields=lambda r: {'inputs': files.alpaca_inputs(r, 'stanford')
                                    + f"\n\nExample: {r['example_input']}",
                          'targets': r['output']})

Alpaca records are numbered by their position in the array: "data.json:3" is the third.

File data with Flan templates: `file_source(...)` reads and splits files the same way and
yields the raw records for a templates.TaskSpec, every key as a string: strings as they are,
null and keys missing from a record as '', other JSON values as their JSON text (decode a
list with json.loads). Its records are checked for format only (bad JSON, wrong column
counts); the spec's `fields` reads the keys:

    from tasks import templates
    labels = ['negative', 'positive']
    templates.register(templates.TaskSpec(
        name='reviews',
        source=files.file_source(split_paths={'train': 'train.tsv', 'validation': 'dev.tsv'}),
        fields=lambda ex: {'sentence': ex['sentence'], 'answer': labels[int(ex['label'])],
                           'options': labels},
        templates=[templates.Template('{sentence}\n\nIs this review positive or negative?'
                                      '{options_}')]),
        vocabulary)   # reviews_zsopt, reviews_zsnoopt, reviews_fsopt, ... and reviews_mix

Files are read and checked when the task (or source) is made, so a mistake surfaces before
training starts. A malformed record (bad JSON, a missing, empty or non-string field, a
targets value not in targets_map, a row with the wrong number of columns) is an error naming
the file and line; with `on_error='skip'` such records are dropped and counted instead (the
count is logged and, for tasks, kept in `skipped`). An example is never silently built from
a wrong record.
"""

import csv
import io
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from t5pt.runtime import fs
from t5pt.runtime import vocabularies
from t5pt.runtime.errors import UserError
from tasks import metrics

FORMATS = ('jsonl', 'csv', 'tsv', 'alpaca')
# alpaca_prompt -> (inputs with an input, inputs without one).
ALPACA_PROMPTS = {
  'plain': ('{instruction}\n\n{input}', '{instruction}'),
  'stanford': (
    'Below is an instruction that describes a task, paired with an input that provides further '
    'context. Write a response that appropriately completes the request.\n\n'
    '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:',
    'Below is an instruction that describes a task. '
    'Write a response that appropriately completes the request.\n\n'
    '### Instruction:\n{instruction}\n\n### Response:',
  ),
}
T = TypeVar('T')
Example = dict[str, str]
skipped: dict[str, int] = {}  # Task name -> malformed records dropped with on_error='skip'.
dropped: dict[str, int] = {}  # Task name -> records its fields= function returned None for.


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Percentage (0-100) of predictions equal to their target after stripping spaces."""
  return {'exact_match': metrics.accuracy(targets, predictions)['accuracy']}


def alpaca_inputs(record: Mapping[str, Any], alpaca_prompt: str = 'plain') -> str:
  """The inputs text of an Alpaca object: "instruction" and "input" joined as
  ALPACA_PROMPTS[alpaca_prompt] says (the second text when the input is blank or absent)."""
  with_input, without_input = _alpaca_texts(alpaca_prompt)
  extra = record.get('input') or ''
  text = with_input if extra.strip() else without_input
  return text.format(instruction=record['instruction'], input=extra)


def _alpaca_texts(alpaca_prompt: str) -> tuple[str, str]:
  if alpaca_prompt not in ALPACA_PROMPTS:
    raise UserError(
      f'alpaca_prompt={alpaca_prompt!r} is not one of {list(ALPACA_PROMPTS)}; '
      "pick one (tasks/files.py's docstring shows their texts)."
    )
  return ALPACA_PROMPTS[alpaca_prompt]


def _as_text(value) -> str:
  """A raw value as text: strings as they are, null as '', other JSON values as JSON."""
  if isinstance(value, str):
    return value
  return '' if value is None else json.dumps(value, ensure_ascii=False)


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 200 else text[:200] + '...'


class _Reader:
  """Reads one file into (line, record) pairs; a record is a row's columns or an object."""

  def __init__(self, path: str, file_format: str, on_error: str):
    self.path, self.format, self.on_error = path, file_format, on_error
    self.problems: list[str] = []

  def reject(self, line: int, reason: str) -> None:
    """Raises a malformed record's error, or notes it with on_error='skip'."""
    message = f'{self.path}:{line}: {reason}'
    if self.on_error != 'skip':
      raise UserError(
        message + " (fix the record, or pass on_error='skip' to drop such records and count them)"
      )
    self.problems.append(message)

  def rows(self) -> Iterator[tuple[int, dict]]:
    """(line, record) pairs in file order, as they are read; `line` is where the record
    starts."""
    if not fs.exists(self.path):
      raise UserError(f'Task file {self.path!r} does not exist.')
    # Decoded as is, without newline translation: a quoted CSV field keeps its \r\n. A
    # UTF-8 byte-order mark (spreadsheets write one) is not part of the first field or key.
    text = fs.read_text(self.path).removeprefix('\ufeff')
    for line, record in getattr(self, f'_rows_{self.format}')(text):
      if self._is_object(line, record):
        yield line, record

  def _is_object(self, line: int, record) -> bool:
    if isinstance(record, dict):
      return True
    self.reject(line, f'expected a JSON object, got {type(record).__name__}')
    return False

  def _rows_jsonl(self, text):
    # Lines end at \n only (a \r before it is JSON whitespace): str.splitlines would also
    # split inside strings at characters JSON leaves unescaped, such as U+2028.
    for line, raw in enumerate(text.split('\n'), start=1):
      if not raw.strip():
        continue
      try:
        yield line, json.loads(raw)
      except ValueError as e:
        self.reject(line, f'not valid JSON ({e})')

  def _rows_csv(self, text, delimiter=','):
    # As the csv module requires: the text as the file has it (newline=''), not split into
    # lines first, so a quoted field keeps its line breaks; strict, so a quote that is never
    # closed is an error instead of a field that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter, strict=True)
    header = []
    while not any(cell.strip() for cell in header):  # Blank lines before the header.
      line, header = self._csv_record(reader, header=True)
      if header is None:
        raise UserError(f'{self.path}: empty file; expected a header row naming the fields.')
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
      raise UserError(
        f'{self.path}:{line}: the header names column(s) {repeated} more than once; give '
        'every column its own name.'
      )
    while True:
      line, row = self._csv_record(reader)
      if row is None:
        return
      if not any(cell.strip() for cell in row):  # A blank line, or a rejected record.
        continue
      if len(row) != len(header):
        self.reject(line, f'{len(row)} columns but the header has {len(header)} ({header})')
        continue
      yield line, dict(zip(header, row))

  def _csv_record(self, reader, header: bool = False) -> tuple[int, Optional[list[str]]]:
    """(the line the next record starts on, its fields): [] for a malformed record (once
    rejected; a malformed header is always an error), None at the end of the file."""
    line = reader.line_num + 1
    try:
      return line, next(reader)
    except StopIteration:
      return line, None
    except csv.Error as e:
      if 'field larger than field limit' in str(e):
        reason = (
          f'a field is longer than {csv.field_size_limit()} characters, most likely a quote '
          'that is not closed where it should be'
        )
      elif 'end of data' in str(e):
        reason = 'a quoted field is never closed (the file ends inside it)'
      else:
        reason = f'a quoted field has text after its closing quote ({e})'
      reason += (
        '; a field that starts with " is quoted: it ends at the next " (write a " inside it as "")'
      )
      if header:
        raise UserError(f'{self.path}:{line}: {reason}.') from e
      self.reject(line, reason)
      return line, []

  def _rows_tsv(self, text):
    return self._rows_csv(text, delimiter='\t')

  def _rows_alpaca(self, text):
    try:
      items = json.loads(text)
    except ValueError as e:
      raise UserError(
        f'{self.path}: not valid JSON ({e}); Alpaca data is one JSON array '
        'of {"instruction", "input", "output"} objects.'
      ) from e
    if not isinstance(items, list):
      raise UserError(f'{self.path}: expected a JSON array of examples.')
    return enumerate(items, start=1)


def _text_field(reader: _Reader, line: int, record: dict, field: str) -> Optional[str]:
  value = record.get(field)
  if isinstance(value, str) and value.strip():
    return value
  reader.reject(
    line, f'field {field!r} is missing, empty or not a string (fields present: {sorted(record)})'
  )
  return None


class _Examples:
  """Builds one {'inputs', 'targets'} example from a record, as register_file_task's
  arguments say; None leaves the record out."""

  def __init__(
    self,
    task: str,
    inputs_field: Optional[str],
    targets_field: Optional[str],
    targets_map: Optional[Mapping[str, str]],
    fields: Optional[Callable[[dict], Optional[dict]]],
    alpaca_prompt: Optional[str],
  ):
    options = {
      'inputs_field': inputs_field,
      'targets_field': targets_field,
      'targets_map': targets_map,
      'alpaca_prompt': alpaca_prompt,
    }
    given = [k + '=' for k, v in options.items() if v is not None]
    if fields is not None and given:
      raise UserError(
        f'Task {task!r}: fields= builds inputs and targets itself, so drop {", ".join(given)} '
        '(map labels or join Alpaca keys inside the function; '
        'files.alpaca_inputs(record, alpaca_prompt) gives the Alpaca join).'
      )
    if fields is not None and not callable(fields):
      raise UserError(f'Task {task!r}: fields= must be a function, got {_short(fields)}.')
    if alpaca_prompt is not None:
      _alpaca_texts(alpaca_prompt)
    if targets_map is not None:
      _check_targets_map(task, targets_map)
    self.task, self.fields, self.targets_map = task, fields, targets_map
    self.named = [g for g in given if g in ('inputs_field=', 'targets_field=')]
    self.inputs_field, self.targets_field = inputs_field or 'inputs', targets_field or 'targets'
    self.alpaca_prompt = alpaca_prompt
    self.dropped = 0

  def __call__(self, reader: _Reader, line: int, record: dict) -> Optional[Example]:
    if self.fields is not None:
      return self._from_function(reader, line, record)
    if reader.format == 'alpaca':
      inputs, targets_field = self._alpaca(reader, line, record), 'output'
    else:
      inputs, targets_field = self._columns(reader, line, record), self.targets_field
    if inputs is None:
      return None
    targets = self._targets(reader, line, record, targets_field)
    return None if targets is None else {'inputs': inputs, 'targets': targets}

  def _columns(self, reader: _Reader, line: int, record: dict) -> Optional[str]:
    if self.alpaca_prompt is not None:
      raise UserError(
        f'Task {self.task!r}: alpaca_prompt= applies to Alpaca JSON files, not the '
        f'{reader.format} file {reader.path!r}; drop it.'
      )
    return _text_field(reader, line, record, self.inputs_field)

  def _alpaca(self, reader: _Reader, line: int, record: dict) -> Optional[str]:
    if self.named:
      raise UserError(
        f'Task {self.task!r}: Alpaca file {reader.path!r} has fixed keys (instruction, input, '
        f'output); drop {", ".join(self.named)}, or pass fields= to use other keys.'
      )
    if _text_field(reader, line, record, 'instruction') is None:
      return None
    if not isinstance(record.get('input') or '', str):
      reader.reject(line, f"field 'input' is not a string: {_short(record['input'])}")
      return None
    return alpaca_inputs(record, self.alpaca_prompt or 'plain')

  def _targets(self, reader: _Reader, line: int, record: dict, field: str) -> Optional[str]:
    if self.targets_map is None:
      return _text_field(reader, line, record, field)
    if record.get(field) is None:
      reader.reject(line, f'field {field!r} is missing (fields present: {sorted(record)})')
      return None
    value = _as_text(record[field])
    if value not in self.targets_map:
      reader.reject(
        line,
        f'{field} value {value!r} is not a key of targets_map (keys: '
        f'{_short(sorted(self.targets_map))}); add it to the map',
      )
      return None
    return self.targets_map[value]

  def _from_function(self, reader: _Reader, line: int, record: dict) -> Optional[Example]:
    try:
      example = self.fields(record)
    except Exception as e:  # The user's code: any failure is reported at its record.
      raise UserError(
        f'{reader.path}:{line}: the fields= function raised {type(e).__name__}: {e} on '
        f'{_short(record)}; fix the function, or return None for such records.'
      ) from e
    if example is None:
      self.dropped += 1
      return None
    valid = isinstance(example, Mapping) and set(example) == {'inputs', 'targets'}
    if not valid or not all(isinstance(v, str) and v.strip() for v in example.values()):
      raise UserError(
        f'{reader.path}:{line}: the fields= function returned {_short(example)}; it must '
        "return {'inputs': str, 'targets': str} with non-empty strings, or None to drop "
        'the record.'
      )
    return dict(example)


def _check_targets_map(task: str, targets_map) -> None:
  valid = isinstance(targets_map, Mapping) and all(
    isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in targets_map.items()
  )
  if not valid:
    raise UserError(
      f'Task {task!r}: targets_map must map each value as the file writes it (a string) to '
      f"its target text (a non-empty string), e.g. {{'0': 'negative', '1': 'positive'}}; "
      f'got {_short(targets_map)}.'
    )


def _raw_record(reader: _Reader, line: int, record: dict) -> Example:
  """Every key of a record, each value as text (see `file_source`)."""
  del reader, line
  return {key: _as_text(value) for key, value in record.items()}


def _format_of(path: str, file_format: Optional[str]) -> str:
  found = file_format or os.path.splitext(path)[1].lstrip('.').lower()
  if found == 'json':
    found = 'alpaca'
  if found not in FORMATS:
    raise UserError(f'Cannot tell the format of {path!r}; pass file_format= one of {FORMATS}.')
  return found


def _split_by_ratio(items: list[T], ratio: Mapping[str, float], seed: int) -> dict[str, list[T]]:
  """Deterministic shuffle by `seed`, then consecutive slices in `ratio`'s order."""
  total = sum(ratio.values())
  if total <= 0 or any(r < 0 for r in ratio.values()):
    raise UserError(f'split_ratio={dict(ratio)} must be non-negative fractions.')
  order = np.random.default_rng(seed).permutation(len(items))
  splits, start = {}, 0
  for i, (name, fraction) in enumerate(ratio.items()):
    end = len(items) if i == len(ratio) - 1 else start + round(len(items) * fraction / total)
    splits[name] = [items[j] for j in order[start:end]]
    start = end
  return splits


def _load(
  what: str,
  path: Optional[str],
  split_paths: Optional[Mapping[str, str]],
  split_ratio: Optional[Mapping[str, float]],
  file_format: Optional[str],
  on_error: str,
  seed: int,
  build: Callable[[_Reader, int, dict], Optional[Example]],
) -> tuple[dict[str, list[Example]], list[str]]:
  """Reads the files into split -> examples, `build(reader, line, record)` making each
  (None leaves the record out); returns them and the skipped records' messages. `what`
  names the caller in errors."""
  if on_error not in ('raise', 'skip'):
    raise UserError(f"on_error={on_error!r}: use 'raise' or 'skip'.")
  if bool(path) == bool(split_paths):
    raise UserError(
      f'{what}: give either path= (with split_ratio=) or split_paths=, not both or neither.'
    )
  if path and not split_ratio:
    raise UserError(
      f"{what}: one file needs split_ratio=, e.g. {{'train': 0.9, 'validation': 0.1}}."
    )
  readers = []

  def read(file_path: str) -> list[Optional[Example]]:
    reader = _Reader(file_path, _format_of(file_path, file_format), on_error)
    readers.append(reader)
    return [build(reader, line, record) for line, record in reader.rows()]

  # A record's split depends on its place among the file's records, not on what it builds.
  splits = (
    _split_by_ratio(read(path), split_ratio, seed)
    if path
    else {split: read(p) for split, p in split_paths.items()}
  )
  splits = {split: [e for e in built if e is not None] for split, built in splits.items()}
  problems = [p for reader in readers for p in reader.problems]
  if problems:
    logging.warning(
      '%s: skipped %d malformed record(s), first: %s', what, len(problems), problems[0]
    )
  empty = [split for split, examples in splits.items() if not examples]
  if empty:
    raise UserError(f'{what}: split(s) {empty} have no examples.')
  return splits, problems


def _source(splits: Mapping[str, list[Example]]) -> seqio.FunctionDataSource:
  """A source of string features, one per key of any example ('' where an example lacks it)."""
  keys = sorted({key for examples in splits.values() for e in examples for key in e})
  columns = {
    s: {k: [e.get(k, '') for e in examples] for k in keys} for s, examples in splits.items()
  }

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(columns[split])

  return seqio.FunctionDataSource(
    dataset_fn, splits=tuple(splits), num_input_examples={s: len(e) for s, e in splits.items()}
  )


def file_source(
  *,
  path: Optional[str] = None,
  split_paths: Optional[Mapping[str, str]] = None,
  split_ratio: Optional[Mapping[str, float]] = None,
  file_format: Optional[str] = None,
  on_error: str = 'raise',
  seed: int = 0,
) -> seqio.DataSource:
  """A seqio source of the files' raw records, for templates.TaskSpec(source=...).

  Files, formats, splits and malformed records as for `register_file_task`. Each example
  has every key that any record has, as a string: strings as they are, null and missing
  keys as '', other JSON values (numbers, booleans, lists, objects) as their JSON text.
  """
  what = f'file_source({path or dict(split_paths or {})!r})'
  splits, _ = _load(what, path, split_paths, split_ratio, file_format, on_error, seed, _raw_record)
  return _source(splits)


def register_file_task(
  name: str,
  *,
  path: Optional[str] = None,
  split_paths: Optional[Mapping[str, str]] = None,
  split_ratio: Optional[Mapping[str, float]] = None,
  vocabulary: Union[str, seqio.Vocabulary],
  file_format: Optional[str] = None,
  inputs_field: Optional[str] = None,
  targets_field: Optional[str] = None,
  targets_map: Optional[Mapping[str, str]] = None,
  fields: Optional[Callable[[dict], Optional[dict]]] = None,
  alpaca_prompt: Optional[str] = None,
  metric_fns: Sequence = (exact_match,),
  on_error: str = 'raise',
  seed: int = 0,
) -> seqio.Task:
  """Registers (or re-registers) seqio task `name` from files and returns it.

  Give either `split_paths` ({'train': ..., 'validation': ...}) or one `path` with a
  `split_ratio` ({'train': 0.9, 'validation': 0.1}). `vocabulary` is a seqio vocabulary,
  or a SentencePiece model / HF checkpoint folder to read one from (T5's has 100 extra
  ids). `inputs_field` and `targets_field` default to 'inputs' and 'targets'; Alpaca files
  have fixed keys and `alpaca_prompt` ('plain' unless given) joins them. `targets_map`,
  `fields` and the rest: see the module docstring.
  """
  examples = _Examples(name, inputs_field, targets_field, targets_map, fields, alpaca_prompt)
  if isinstance(vocabulary, str):
    vocabulary = vocabularies.sentencepiece(vocabulary)
  what = f'Task {name!r}'
  splits, problems = _load(
    what, path, split_paths, split_ratio, file_format, on_error, seed, examples
  )
  skipped[name], dropped[name] = len(problems), examples.dropped
  if examples.dropped:
    logging.info('%s: the fields= function dropped %d record(s).', what, examples.dropped)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  feature = seqio.Feature(vocabulary, add_eos=True)
  return seqio.TaskRegistry.add(
    name,
    source=_source(splits),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={'inputs': feature, 'targets': feature},
    metric_fns=list(metric_fns),
  )
