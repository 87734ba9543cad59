"""Metrics files: JSON lines and TensorBoard scalars, through t5pt.runtime.fs (local or gs://).

Units follow t5's metric functions: every accuracy-like metric (token_accuracy,
sequence_accuracy, accuracy, exact_match, em, f1, rouge*, bleu) is a percentage, 0-100, in
metrics.jsonl, in TensorBoard (whose tags carry the unit in their description) and in
every printed line (`token_accuracy=74.20%`). Losses and rates have their natural units.

Object stores cannot append, so both files are rewritten whole at every write. They stay
small (a line or a few scalars per log period), and a reader never sees half a file.
"""

import json
import math
import re
import socket
import time
from typing import Mapping, Optional

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer

from t5pt.runtime import fs

_PERCENTAGE = re.compile(r'((^|_)(accuracy|exact_match|em|f1|bleu)|^rouge\w*)$')


def is_percentage(name: str) -> bool:
  """Whether metric `name` (possibly 'task/name') is on t5's 0-100 scale."""
  return bool(_PERCENTAGE.search(name.rsplit('/', 1)[-1]))


def describe(values: Mapping[str, float]) -> str:
  """'loss=0.4123, token_accuracy=74.20%' for a printed line."""
  return ', '.join(
    f'{name}={value:.2f}%' if is_percentage(name) else f'{name}={value:.4g}'
    for name, value in values.items()
  )


class _ByteSink:
  """The file object tensorboard's RecordWriter writes framed records into."""

  def __init__(self):
    self.chunks = []

  def write(self, data: bytes) -> None:
    self.chunks.append(data)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class EventFile:
  """One TensorBoard event file of scalars (the `simple_value` summaries TensorBoard's
  scalar dashboard reads)."""

  def __init__(self, directory: str):
    started = time.time()
    self.path = fs.join(
      directory, f'events.out.tfevents.{int(started)}.{socket.gethostname()}.t5pt'
    )
    self._sink = _ByteSink()
    self._records = record_writer.RecordWriter(self._sink)
    self._records.write(
      event_pb2.Event(wall_time=started, file_version='brain.Event:2').SerializeToString()
    )

  def write(self, step: int, values: Mapping[str, float]) -> None:
    summary = summary_pb2.Summary(
      value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value), metadata=_metadata(name))
        for name, value in values.items()
      ]
    )
    self._records.write(
      event_pb2.Event(wall_time=time.time(), step=step, summary=summary).SerializeToString()
    )
    fs.write_bytes(self.path, b''.join(self._sink.chunks))


def _metadata(name: str) -> Optional[summary_pb2.SummaryMetadata]:
  if not is_percentage(name):
    return None
  return summary_pb2.SummaryMetadata(
    display_name=f'{name} (%)', summary_description='percent, 0-100 (t5 metric convention)'
  )


class JsonLines:
  """A JSON-lines file rewritten whole at each append."""

  def __init__(self, path: str, keep=lambda record: True):
    """Keeps the records of an existing file for which `keep(record)` holds."""
    self.path = path
    self._lines = []
    if fs.exists(path):
      self._lines = [
        line + '\n'
        for line in fs.read_text(path).splitlines()
        if line.strip() and keep(json.loads(line))
      ]

  def append(self, record: Mapping) -> None:
    # NaN and Inf are not JSON: a non-finite value is written as null.
    record = {
      k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
    self._lines.append(json.dumps(record, allow_nan=False) + '\n')
    fs.write_text(self.path, ''.join(self._lines))


class MetricsLog:
  """A run's MODEL_DIR/metrics.jsonl ({"split", "step", metrics...} per line) and
  TensorBoard events in MODEL_DIR/<split>/. Only process 0 writes."""

  def __init__(self, model_dir: str, resume_step: Optional[int] = None):
    """Resuming from `resume_step`, lines of later steps (logged after that checkpoint by
    the interrupted run, and about to be logged again) are dropped; a fresh run (None)
    drops every line of an attempt that died before its first checkpoint."""
    self._model_dir = model_dir
    self._writes = jax.process_index() == 0
    self._jsonl = None
    if self._writes:
      self._jsonl = JsonLines(
        fs.join(model_dir, 'metrics.jsonl'),
        keep=lambda r: resume_step is not None and r.get('step', 0) <= resume_step,
      )
    self._events = {}

  def write(self, split: str, step: int, values: Mapping[str, float]) -> None:
    if not self._writes:
      return
    self._jsonl.append({'split': split, 'step': step, **values})
    if split not in self._events:
      self._events[split] = EventFile(fs.join(self._model_dir, split))
    self._events[split].write(step, values)
