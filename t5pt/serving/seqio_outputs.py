"""How t5pt feeds seqio's Evaluator and records what it returns: enumerated eval
batches in, `<task>-metrics.jsonl`, per-example decodes and TensorBoard scalars out."""

import json
import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from t5pt.runtime import fs
from t5pt.runtime import metrics_log


class OutputLogger(seqio.Logger):
  """seqio's results through t5pt.runtime.fs: `<task>-metrics.jsonl` (a line per evaluation),
  `<task>-<step>.jsonl` (inputs, target and prediction per example) and TensorBoard
  scalars in `<task>/` (unless `tensorboard` is off: training logs them itself). Both
  files are strict JSON: a metric, target or prediction that is NaN or Inf (e.g. a
  correlation of constant predictions) is written as null."""

  def __init__(self, output_dir: str, tensorboard: bool = True):
    super().__init__(output_dir)
    self._tensorboard = tensorboard
    self.subdirectory = ''  # results go to output_dir/subdirectory (e.g. an ensemble member)

  def __call__(
    self,
    task_name: str,
    step: Optional[int],
    metrics: Mapping[str, seqio.metrics.MetricValue],
    dataset,
    inferences: Optional[Mapping[str, Sequence[Any]]],
    targets: Optional[Sequence[Any]],
  ) -> None:
    if jax.process_index() != 0:
      return
    output_dir = (
      fs.join(self.output_dir, self.subdirectory) if self.subdirectory else self.output_dir
    )
    step = step or 0
    scalars = {
      name: scalar(value)
      for name, value in metrics.items()
      if isinstance(value, (seqio.metrics.Scalar, int, float))
    }
    metrics_log.JsonLines(fs.join(output_dir, f'{task_name}-metrics.jsonl')).append(
      {'step': step, **scalars}
    )
    if self._tensorboard:
      metrics_log.EventFile(fs.join(output_dir, task_name)).write(step, scalars)
    if dataset is None or not inferences or not targets:
      return
    lines = []
    for example, target, prediction in zip(
      dataset.as_numpy_iterator(), targets, inferences.get('prediction', ())
    ):
      raw = example.get('inputs_pretokenized', b'')
      lines.append(
        json.dumps(
          {
            'inputs': raw.decode() if isinstance(raw, bytes) else str(raw),
            'target': _jsonable(target),
            'prediction': _jsonable(prediction),
          },
          allow_nan=False,
        )
        + '\n'
      )
    fs.write_text(fs.join(output_dir, f'{task_name}-{step:06d}.jsonl'), ''.join(lines))


def write_tool_use(output_dir: str, task: str, step: int, stats: dict, decoded) -> None:
  """Appends the tool-use statistics to `<task>-tool_use.jsonl` and writes each example's
  decode with its calls (tool_decoding.Decoded, in example order) to
  `<task>-<step>-calls.jsonl`."""
  metrics_log.JsonLines(fs.join(output_dir, f'{task}-tool_use.jsonl')).append(
    {'step': step, **stats}
  )
  lines = [
    json.dumps(
      {
        'prediction': row.text,
        'prediction_without_calls': row.text_without_calls,
        'calls': [call.to_json() for call in row.calls],
      }
    )
    + '\n'
    for row in decoded
  ]
  fs.write_text(fs.join(output_dir, f'{task}-{step:06d}-calls.jsonl'), ''.join(lines))


def _jsonable(value):
  """A target or prediction as JSON: bytes as text, numpy values as Python ones, and a
  non-finite number (NaN or Inf, which JSON cannot hold; e.g. a regression task's
  prediction parsed from "nan") as null."""
  if isinstance(value, bytes):
    return value.decode()
  if isinstance(value, (np.ndarray, np.generic)):
    value = value.tolist()
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  return value if isinstance(value, (str, int, bool)) or value is None else str(value)


def scalar(value) -> float:
  """seqio metric values may be plain numbers or seqio.metrics.Scalar."""
  return float(getattr(value, 'value', value))


def enumerated_batches(ds, batch_size: int):
  """(example indices, zero-padded numpy batch of batch_size rows) from an enumerated
  seqio evaluation dataset."""
  indices, rows = [], []
  for index, example in ds.as_numpy_iterator():
    indices.append(index)
    rows.append(example)
    if len(rows) == batch_size:
      yield indices, _stack(rows, batch_size)
      indices, rows = [], []
  if rows:
    yield indices, _stack(rows, batch_size)


def _stack(rows, batch_size: int) -> dict[str, np.ndarray]:
  keys = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
  batch = {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in keys}
  pad = batch_size - len(rows)
  return {k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()}
