"""BM25 over a local corpus of passages (bm25s): the offline stand-in for Toolformer's
WikiSearch. The argument is a query; the result is the best `k` passages, each cut to an
equal share of the result cap and joined by a separator.

The corpus, local or gs://, is read through t5pt.runtime.fs and indexed once, when the tool
is made; any problem with it is a UserError then, before anything loads. Two formats:

  .jsonl  one JSON object a line: {"text": ..., "title": ... (optional)}; blank lines skipped
  .tsv    a header row naming a `text` column (and optionally `title`), one passage a row,
          e.g. DPR's `id<TAB>text<TAB>title`
"""

import csv
import io
import json
import os

import numpy as np

from t5pt.runtime import fs
from t5pt.runtime.errors import UserError
from t5pt.tools import base

_FORMATS = '.jsonl (one {"text": ..., "title": ...} a line) or .tsv (a header naming "text")'


def _bm25s():
  # Imported when a retrieval tool is made, not with t5pt: importing bm25s starts JAX's
  # backend, and a command on several hosts must start jax.distributed before that.
  import bm25s  # pylint: disable=import-outside-toplevel

  return bm25s


def _words(texts: list[str]) -> list[list[str]]:
  return _bm25s().tokenize(texts, stopwords='en', return_ids=False, show_progress=False)


def _passage(text, title, where: str) -> str:
  """The passage as the model reads it, `title: text`, whitespace collapsed."""
  if not isinstance(text, str) or not text.strip():
    raise UserError(f'{where}: "text" is {text!r}, not a passage; the corpus must be {_FORMATS}.')
  if title is not None and not isinstance(title, str):
    raise UserError(f'{where}: "title" is {title!r}, not a string.')
  text = ' '.join(text.split())
  title = ' '.join((title or '').split())
  return f'{title}: {text}' if title else text


def _jsonl(content: str, corpus: str, setting: str) -> list[str]:
  passages = []
  for number, line in enumerate(content.splitlines(), 1):
    if not line.strip():
      continue
    where = f'{setting}: {corpus}:{number}'
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f'{where}: not valid JSON ({e.msg}); the corpus must be {_FORMATS}.') from e
    if not isinstance(row, dict):
      raise UserError(f'{where}: a JSON {type(row).__name__}, not an object with a "text".')
    passages.append(_passage(row.get('text'), row.get('title'), where))
  return passages


def _tsv(content: str, corpus: str, setting: str) -> list[str]:
  rows = csv.reader(io.StringIO(content, newline=''), delimiter='\t')
  try:
    header = next(rows, [])
    if 'text' not in header:
      raise UserError(
        f'{setting}: {corpus}:1: the header {header!r} names no "text" column; the corpus '
        f'must be {_FORMATS}.'
      )
    text = header.index('text')
    title = header.index('title') if 'title' in header else None
    passages = []
    for row in rows:
      where = f'{setting}: {corpus}:{rows.line_num}'
      if not any(field.strip() for field in row):
        continue
      if len(row) != len(header):
        raise UserError(f'{where}: {len(row)} fields under a header of {len(header)}.')
      passages.append(_passage(row[text], None if title is None else row[title], where))
  except csv.Error as e:
    raise UserError(f'{setting}: {corpus}:{rows.line_num}: not TSV ({e}).') from e
  return passages


def read_passages(corpus: fs.PathLike, setting: str = 'TOOLS') -> list[str]:
  """The passages of a corpus file as the model reads them; UserErrors name `setting`."""
  corpus = os.fspath(corpus)
  fs.check_gcs_reachable(corpus, setting)
  named = f'{setting}: the Retrieval corpus {corpus!r}'
  if not fs.exists(corpus) or fs.isdir(corpus):
    raise UserError(f'{named} is not a file; point corpus= at {_FORMATS}.')
  if corpus.endswith('.jsonl'):
    read = _jsonl
  elif corpus.endswith('.tsv'):
    read = _tsv
  else:
    raise UserError(f'{named}: unknown format; the corpus must be {_FORMATS}.')
  try:
    content = fs.read_text(corpus)
  except UserError as e:
    raise UserError(f'{setting}: {e}') from e
  passages = read(content, corpus, setting)
  if not passages:
    raise UserError(f'{named} holds no passages; the corpus must be {_FORMATS}.')
  return passages


class Retrieval(base.Tool):
  """The `k` passages of `corpus` that best match the argument (BM25, English stopwords out),
  joined by `separator`. No matching word is a ToolError the model reads."""

  def __init__(
    self, corpus: fs.PathLike, k: int = 3, separator: str = ' | ', setting: str = 'TOOLS'
  ):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      raise UserError(f'{setting}: Retrieval(k={k!r}) must be a whole number >= 1, e.g. 3.')
    self.k = k
    self.separator = separator
    self._passages = read_passages(corpus, setting)
    self._index = _bm25s().BM25()
    self._index.index(_words(self._passages), show_progress=False)

  def __call__(self, argument: str) -> str:
    words = [w for w in _words([argument])[0] if w in self._index.vocab_dict]
    best = []
    if words:
      scores = self._index.get_scores(words)
      best = [i for i in np.argsort(-scores, kind='stable')[: self.k] if scores[i] > 0]
    if not best:
      raise base.ToolError(f'no passage matches {base.bounded(argument, 60)!r}')
    cap = self.limits.max_result_chars
    share = max((cap - (len(best) - 1) * len(self.separator)) // len(best), 4)
    return self.separator.join(base.bounded(self._passages[i], share) for i in best)
