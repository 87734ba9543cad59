"""What infer decodes and what it writes (batch_inference runs the command between them).

In: a task split (task_source) or INPUT_FILE (read_input_file: .txt, one input per line;
.jsonl, objects with "inputs" and optionally "targets" and "prompt"), read and checked
before any model loads, then tokenized once the model says how (tokenized).

Out: one strict-JSON line per example (output_lines; line_score: a log-likelihood, null
for -inf, a stop for NaN), written in chunks to <name>.jsonl.parts/ (ChunkedOutput); an
interrupted run continues after the last complete chunk with the settings it began with
(started), and the final file appears in one rename once everything is decoded, so a
finished file is never half-written.
"""

import dataclasses
import json
import math
import posixpath
from typing import Mapping, Optional, Sequence

import seqio

from t5pt.runtime import data
from t5pt.runtime import distributed
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError
from t5pt.serving import inference

Example = dict  # {'tokens': list[int], 'inputs': str, optional 'targets': str}


@dataclasses.dataclass(frozen=True)
class Source:
  """What to decode: a name for the output file, examples, and how to detokenize."""

  name: str
  examples: Sequence[Example]
  vocabulary: seqio.Vocabulary


def task_source(name: str, split: str, input_length: int) -> Source:
  """The split of a registered task or mixture, in its deterministic order."""
  provider = data.get_provider(name)
  if split not in provider.splits:
    raise UserError(
      f'{name!r} has no split {split!r}; it has {sorted(provider.splits)}. Set SPLIT.'
    )
  ds = provider.get_dataset(
    {'inputs': input_length, 'targets': 1 << 16}, split=split, shuffle=False, seed=0
  )
  examples = []
  for ex in ds.as_numpy_iterator():
    # As the task made them for training and t5x makes them: trimmed to input_length,
    # with the task's own EOS (one, not a second).
    example = {'tokens': list(ex['inputs']), 'inputs': _text(ex, 'inputs', provider)}
    if 'targets' in ex:
      example['targets'] = _text(ex, 'targets', provider)
    examples.append(example)
  return Source(f'{name}-{split}', examples, data.vocabulary(name))


def _text(example, feature: str, provider) -> str:
  raw = example.get(f'{feature}_pretokenized')
  if raw is not None:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
  return provider.output_features[feature].vocabulary.decode([int(t) for t in example[feature]])


# Extensions of files whose lines are not inputs: read as text, a header or a JSON array
# would be decoded as if it were one.
_NOT_LINES = {
  '.csv': 'a CSV file',
  '.tsv': 'a TSV file',
  '.json': 'a JSON document',
}


def read_input_file(path: str, prompt_names: Optional[Sequence[str]] = None) -> list[dict]:
  """The examples of INPUT_FILE `path`, a .txt (one input per line) or .jsonl file
  ({"inputs": ..., "targets": ..., "prompt": ...}), not yet tokenized (no model is needed
  to read and check them): {'inputs', optional 'targets' and 'prompt'}. `prompt_names`:
  the PROMPTS a line may name in "prompt" (None: lines name none).
  A UTF-8 byte-order mark at the start is ignored; lines end at LF (or CRLF)."""
  fs.check_gcs_reachable(path, 'INPUT_FILE')
  if not fs.exists(path):
    raise UserError(f'INPUT_FILE={path!r} does not exist.')
  if fs.isdir(path):
    raise UserError(
      f'INPUT_FILE={path!r} is a directory; name one .txt or .jsonl file (one input per line).'
    )
  extension = posixpath.splitext(path)[1].lower()
  if extension in _NOT_LINES:
    raise UserError(
      f'INPUT_FILE={path!r} is {_NOT_LINES[extension]}; infer reads .txt (one input per line) '
      'or .jsonl ({"inputs": ..., "targets": ...} per line) files: convert it, or decode a '
      'task registered from it (tasks/files.py).'
    )
  text = fs.read_text(path).removeprefix('\ufeff')
  examples = []
  # Not str.splitlines, which also splits at \x0b, \x1c, U+2028 and other characters an
  # input (or a JSON string) may hold.
  for number, line in enumerate(text.split('\n'), start=1):
    line = line.removesuffix('\r')
    if not line.strip():
      continue
    if path.endswith('.jsonl'):
      try:
        record = json.loads(line)
      except ValueError as e:
        raise UserError(f'{path}:{number}: not a JSON object ({e}).') from e
      if not isinstance(record, dict) or not isinstance(record.get('inputs'), str):
        raise UserError(
          f'{path}:{number}: expected an object with a string "inputs" field, got {line[:80]!r}.'
        )
      example = {'inputs': record['inputs']}
      if isinstance(record.get('targets'), str):
        example['targets'] = record['targets']
    else:
      record, example = {}, {'inputs': line}
    if prompt_names is not None or 'prompt' in record:
      example['prompt'] = _prompt_of(record, prompt_names, f'{path}:{number}')
    examples.append(example)
  if not examples:
    what = '{"inputs": ...} object' if path.endswith('.jsonl') else 'input'
    raise UserError(
      f'INPUT_FILE={path!r} holds no inputs (it is empty or has only blank lines); write one '
      f'{what} per line, or point INPUT_FILE at the file that has them.'
    )
  return examples


def tokenized(
  path: str, examples: Sequence[dict], vocabulary: seqio.Vocabulary, input_length: int
) -> Source:
  """read_input_file's examples of `path`, each with its 'tokens': the inputs' ids trimmed
  to `input_length` with the EOS."""
  rows = []
  for example in examples:
    ids = list(vocabulary.encode(example['inputs']))[: input_length - 1]
    rows.append({**example, 'tokens': ids + [inference.EOS_ID]})
  stem, extension = posixpath.splitext(posixpath.basename(path))
  return Source(f'{stem}-{extension.lstrip(".")}', rows, vocabulary)


def _prompt_of(record: Mapping, names: Optional[Sequence[str]], where: str) -> str:
  """The PROMPTS entry a JSONL record names (the only one, when it names none)."""
  if names is None:
    raise UserError(
      f'{where}: the line names a prompt ({record["prompt"]!r}), but only PROMPTS serves '
      'several prompts: set PROMPTS, or drop the "prompt" field.'
    )
  if 'prompt' not in record:
    if len(names) == 1:
      return names[0]
    raise UserError(
      f'{where}: the line names no prompt; add "prompt": one of {list(names)} (PROMPTS).'
    )
  if record['prompt'] not in names:
    raise UserError(f'{where}: unknown prompt {record["prompt"]!r}; PROMPTS names {list(names)}.')
  return record['prompt']


def started(output_dir: str, model: Mapping) -> Optional[dict]:
  """The settings of an unfinished run of infer into `output_dir` with the same `model`
  (its checkpoint_path, or its PROMPTS / ENSEMBLE): the steps it began with. A run that is
  still training may have saved newer checkpoints since, and one output must not mix two
  checkpoints' predictions."""
  for settings_file in fs.glob(output_dir, '*.jsonl.parts/settings.json'):
    settings = json.loads(fs.read_text(settings_file))
    if all(settings.get(key) == value for key, value in model.items()):
      return settings
  return None


class ChunkedOutput:
  """Results written as numbered chunk files, joined into one JSONL at the end. Every
  process reads where the output stands; process 0 alone writes, after `start`."""

  def __init__(self, output_dir: str, name: str, settings: Mapping):
    self.final_path = fs.join(output_dir, f'{name}.jsonl')
    self.parts_dir = self.final_path + '.parts'
    self._settings_file = fs.join(self.parts_dir, 'settings.json')
    self._settings = json.loads(json.dumps(settings, allow_nan=False))
    self._writes = distributed.is_writer()
    if fs.exists(self._settings_file):
      previous = json.loads(fs.read_text(self._settings_file))
      if previous != self._settings:
        raise UserError(
          f'{self.parts_dir} holds a partial run with other settings '
          f'({previous}); delete it or choose another INFER_OUTPUT_DIR.'
        )

  def start(self) -> None:
    """Records the settings (once every process has read the output's state)."""
    distributed.barrier('t5pt infer: output state read')
    if self._writes and not fs.exists(self._settings_file):
      fs.write_text(
        self._settings_file, json.dumps(self._settings, sort_keys=True, allow_nan=False)
      )

  def _chunk(self, index: int) -> str:
    return fs.join(self.parts_dir, f'chunk-{index:05d}.jsonl')

  def completed_chunks(self) -> int:
    done = sorted(
      int(posixpath.basename(n)[6:11]) for n in fs.glob(self.parts_dir, 'chunk-*.jsonl')
    )
    return next((i for i, n in enumerate(done) if i != n), len(done))

  def write_chunk(self, index: int, lines: Sequence[dict]) -> None:
    if self._writes:
      text = ''.join(json.dumps(line, allow_nan=False) + '\n' for line in lines)
      fs.write_text(self._chunk(index), text)

  def finish(self, num_chunks: int) -> None:
    if self._writes:
      lines = ''.join(fs.read_text(self._chunk(i)) for i in range(num_chunks))
      fs.write_text(self.final_path, lines)
      fs.remove(self.parts_dir)


def output_lines(examples, tokens, scores, vocabulary) -> list[dict]:
  """Each example's output line from its decodes `tokens` [batch, num_decodes, length] and
  their `scores` [batch, num_decodes]."""
  lines = []
  for ex, decodes, decode_scores in zip(examples, tokens, scores):
    texts = [vocabulary.decode(inference.until_eos(d)) for d in decodes]
    scores = [line_score(s, ex) for s in decode_scores]
    line = {'inputs': ex['inputs'], 'prediction': texts[0], 'score': scores[0]}
    if len(texts) > 1:
      line.update(predictions=texts, scores=scores)
    if 'targets' in ex:
      line['targets'] = ex['targets']
    lines.append(line)
  return lines


def tool_lines(examples, decoded) -> list[dict]:
  """Output lines of decodes that ran tools (tool_decoding.Decoded): the prediction with its
  calls and their results, the prediction without the call spans, and each call as run."""
  lines = []
  for ex, row in zip(examples, decoded):
    line = {
      'inputs': ex['inputs'],
      'prediction': row.text,
      'prediction_without_calls': row.text_without_calls,
      'score': line_score(row.score, ex),
      'calls': [call.to_json() for call in row.calls],
    }
    if 'targets' in ex:
      line['targets'] = ex['targets']
    lines.append(line)
  return lines


def line_score(value, example: Example) -> Optional[float]:
  """A log-likelihood as an output line holds it: None (null) for -inf, a decode the model
  gives no probability; NaN (or +inf) stops the run, as it means the model computes NaN."""
  value = float(value)
  if math.isfinite(value):
    return value
  if value == -math.inf:
    return None
  raise errors.TrainingStopped(
    f'The model scored its decode of the input {example["inputs"][:80]!r} as {value}: it '
    "computes non-finite numbers, so no decode of it can be trusted. FROZEN_DTYPE='float16' "
    "overflows T5's activations (use 'bfloat16' or 'float32'); otherwise the base checkpoint "
    'or a prompt holds NaN or Inf. Nothing non-finite was written.'
  )
