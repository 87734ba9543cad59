"""Seqio tasks from your own files: JSONL, CSV/TSV or Alpaca JSON, in a few lines.

    from tasks import files
    files.register_file_task(
        'my_task', path='data/my.jsonl', vocabulary='checkpoints/flan-t5-base',
        inputs_field='question', targets_field='answer',
        split_ratio={'train': 0.9, 'validation': 0.1})

Formats (from the extension unless `file_format` is given):
  jsonl   one JSON object per line
  csv/tsv a header row naming the fields, then one example per row
  alpaca  a JSON array of {"instruction", "input", "output"} objects; inputs are the
          instruction, then a blank line and the input when there is one

Files are read and checked when the task is registered, so a mistake surfaces before
training starts. A malformed record (bad JSON, a missing or non-string field, a row with
the wrong number of columns) is an error naming the file and line; with
`on_error='skip'` such records are dropped and counted instead (the count is logged and
kept in `skipped`). An example is never silently built from a wrong record.
"""

import csv
import json
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from tasks import metrics
from t5pt import fs
from t5pt import vocabularies
from t5pt.errors import UserError

FORMATS = ('jsonl', 'csv', 'tsv', 'alpaca')
Records = list[dict[str, str]]
skipped: dict[str, int] = {}  # Task name -> records dropped with on_error='skip'.


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Percentage (0-100) of predictions equal to their target after stripping spaces."""
  return {'exact_match': metrics.accuracy(targets, predictions)['accuracy']}


class _Reader:
  """Reads one file into {'inputs', 'targets'} records, collecting or raising on errors."""

  def __init__(
    self, path: str, file_format: str, inputs_field: str, targets_field: str, on_error: str
  ):
    self.path, self.format = path, file_format
    self.fields = (inputs_field, targets_field)
    self.on_error = on_error
    self.problems: list[str] = []

  def _reject(self, line: int, reason: str) -> None:
    message = f'{self.path}:{line}: {reason}'
    if self.on_error != 'skip':
      raise UserError(
        message + " (fix the record, or pass on_error='skip' to drop such records and count them)"
      )
    self.problems.append(message)

  def _record(self, line: int, row) -> Optional[dict]:
    if not isinstance(row, dict):
      self._reject(
        line, f'expected an object with fields {list(self.fields)}, got {type(row).__name__}'
      )
      return None
    values = []
    for field in self.fields:
      value = row.get(field)
      if not isinstance(value, str) or not value.strip():
        self._reject(
          line, f'field {field!r} is missing, empty or not a string (fields present: {sorted(row)})'
        )
        return None
      values.append(value)
    return {'inputs': values[0], 'targets': values[1]}

  def read(self) -> Records:
    if not fs.exists(self.path):
      raise UserError(f'Task file {self.path!r} does not exist.')
    # Decoded as is, without newline translation: a quoted CSV field keeps its \r\n.
    text = fs.read_bytes(self.path).decode('utf-8')
    rows = getattr(self, f'_rows_{self.format}')(text)
    return [r for r in (self._record(line, row) for line, row in rows) if r]

  def _rows_jsonl(self, text):
    for line, raw in enumerate(text.splitlines(), start=1):
      if not raw.strip():
        continue
      try:
        yield line, json.loads(raw)
      except ValueError as e:
        self._reject(line, f'not valid JSON ({e})')

  def _rows_csv(self, text, delimiter=','):
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader, None)
    if not header:
      raise UserError(f'{self.path}: empty file; expected a header row naming the fields.')
    for row in reader:
      if not any(cell.strip() for cell in row):
        continue
      if len(row) != len(header):
        self._reject(
          reader.line_num, f'{len(row)} columns but the header has {len(header)} ({header})'
        )
        continue
      yield reader.line_num, dict(zip(header, row))

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
    for number, item in enumerate(items, start=1):
      if not isinstance(item, dict) or not isinstance(item.get('instruction'), str):
        yield number, None
        continue
      extra = item.get('input') or ''
      prompt = item['instruction'] + (f'\n\n{extra}' if extra.strip() else '')
      yield number, {self.fields[0]: prompt, self.fields[1]: item.get('output')}


def _format_of(path: str, file_format: Optional[str]) -> str:
  found = file_format or os.path.splitext(path)[1].lstrip('.').lower()
  if found == 'json':
    found = 'alpaca'
  if found not in FORMATS:
    raise UserError(f'Cannot tell the format of {path!r}; pass file_format= one of {FORMATS}.')
  return found


def _split_by_ratio(records: Records, ratio: Mapping[str, float], seed: int) -> dict[str, Records]:
  """Deterministic shuffle by `seed`, then consecutive slices in `ratio`'s order."""
  total = sum(ratio.values())
  if total <= 0 or any(r < 0 for r in ratio.values()):
    raise UserError(f'split_ratio={dict(ratio)} must be non-negative fractions.')
  order = np.random.default_rng(seed).permutation(len(records))
  splits, start = {}, 0
  for i, (name, fraction) in enumerate(ratio.items()):
    end = len(records) if i == len(ratio) - 1 else start + round(len(records) * fraction / total)
    splits[name] = [records[j] for j in order[start:end]]
    start = end
  return splits


def register_file_task(
  name: str,
  *,
  path: Optional[str] = None,
  split_paths: Optional[Mapping[str, str]] = None,
  split_ratio: Optional[Mapping[str, float]] = None,
  vocabulary: Union[str, seqio.Vocabulary],
  file_format: Optional[str] = None,
  inputs_field: str = 'inputs',
  targets_field: str = 'targets',
  metric_fns: Sequence = (exact_match,),
  on_error: str = 'raise',
  seed: int = 0,
) -> seqio.Task:
  """Registers (or re-registers) seqio task `name` from files and returns it.

  Give either `split_paths` ({'train': ..., 'validation': ...}) or one `path` with a
  `split_ratio` ({'train': 0.9, 'validation': 0.1}). `vocabulary` is a seqio vocabulary,
  or a SentencePiece model / HF checkpoint folder to read one from (T5's has 100 extra
  ids). For Alpaca files the fields are fixed, so leave the field names alone.
  """
  if on_error not in ('raise', 'skip'):
    raise UserError(f"on_error={on_error!r}: use 'raise' or 'skip'.")
  if bool(path) == bool(split_paths):
    raise UserError(
      f'Task {name!r}: give either path= (with split_ratio=) or split_paths=, not both or neither.'
    )
  if path and not split_ratio:
    raise UserError(
      f"Task {name!r}: one file needs split_ratio=, e.g. {{'train': 0.9, 'validation': 0.1}}."
    )
  if isinstance(vocabulary, str):
    vocabulary = vocabularies.sentencepiece(vocabulary)
  readers = []

  def read(file_path):
    reader = _Reader(
      file_path, _format_of(file_path, file_format), inputs_field, targets_field, on_error
    )
    readers.append(reader)
    return reader.read()

  splits = (
    _split_by_ratio(read(path), split_ratio, seed)
    if path
    else {split: read(p) for split, p in split_paths.items()}
  )
  problems = [p for r in readers for p in r.problems]
  skipped[name] = len(problems)
  if problems:
    logging.warning(
      'Task %s: skipped %d malformed record(s), first: %s', name, len(problems), problems[0]
    )
  empty = [split for split, records in splits.items() if not records]
  if empty:
    raise UserError(f'Task {name!r}: split(s) {empty} have no examples.')

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    records = splits[split]
    return tf.data.Dataset.from_tensor_slices(
      {'inputs': [r['inputs'] for r in records], 'targets': [r['targets'] for r in records]}
    )

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  feature = seqio.Feature(vocabulary, add_eos=True)
  return seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      dataset_fn, splits=tuple(splits), num_input_examples={s: len(r) for s, r in splits.items()}
    ),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={'inputs': feature, 'targets': feature},
    metric_fns=list(metric_fns),
  )
