"""Batch inference into JSONL, t5x-style (entry points: infer.sh, python -m t5pt.infer).

Decodes a task split (default: the run's own task, validation split) or a file of inputs
(.txt: one input per line; .jsonl: objects with "inputs" and optionally "targets") into
INFER_OUTPUT_DIR/<task>-<split>.jsonl (or <file stem>-<extension>.jsonl), one line per
example in input order:

  {"inputs": ..., "prediction": ..., "score": ..., "targets": ...}

(with "predictions"/"scores" lists too when num_decodes > 1). Results are written in
chunks to <name>.jsonl.parts/; an interrupted run continues after the last complete chunk,
and the final file appears in one rename once everything is decoded, so a finished file is
never half-written.
"""

import dataclasses
import functools
import json
import posixpath
from typing import Iterator, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tqdm

from t5pt import checks
from t5pt import data
from t5pt import distributed
from t5pt import errors
from t5pt import fs
from t5pt import inference
from t5pt import models
from t5pt import partitioning
from t5pt import trained_model
from t5pt import vocabularies
from t5pt.errors import UserError

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


def file_source(path: str, vocabulary: seqio.Vocabulary, input_length: int) -> Source:
  """A .txt (one input per line) or .jsonl ({"inputs": ..., "targets": ...}) file."""
  if not fs.exists(path):
    raise UserError(f'INPUT_FILE={path!r} does not exist.')
  examples = []
  for number, line in enumerate(fs.read_text(path).splitlines(), start=1):
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
      example = {'inputs': line}
    ids = list(vocabulary.encode(example['inputs']))[: input_length - 1]
    examples.append({**example, 'tokens': ids + [inference.EOS_ID]})
  stem, extension = posixpath.splitext(posixpath.basename(path))
  return Source(f'{stem}-{extension.lstrip(".")}', examples, vocabulary)


def _started_step(checkpoint_path: str, output_dir: str) -> Optional[int]:
  """The checkpoint step an unfinished run of infer into `output_dir` began with, when
  CHECKPOINT_PATH is the same run directory: its newest step may have moved on since (the
  run is still training), and one output must not mix two checkpoints' predictions."""
  for settings_file in fs.glob(output_dir, '*.jsonl.parts/settings.json'):
    settings = json.loads(fs.read_text(settings_file))
    if settings.get('checkpoint_path') == checkpoint_path:
      return settings.get('checkpoint_step')
  return None


class ChunkedOutput:
  """Results written as numbered chunk files, joined into one JSONL at the end. Every
  process reads where the output stands; process 0 alone writes, after `start`."""

  def __init__(self, output_dir: str, name: str, settings: Mapping):
    self.final_path = fs.join(output_dir, f'{name}.jsonl')
    self.parts_dir = self.final_path + '.parts'
    self._settings_file = fs.join(self.parts_dir, 'settings.json')
    self._settings = json.loads(json.dumps(settings))
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
      fs.write_text(self._settings_file, json.dumps(self._settings, sort_keys=True))

  def _chunk(self, index: int) -> str:
    return fs.join(self.parts_dir, f'chunk-{index:05d}.jsonl')

  def completed_chunks(self) -> int:
    done = sorted(
      int(posixpath.basename(n)[6:11]) for n in fs.glob(self.parts_dir, 'chunk-*.jsonl')
    )
    return next((i for i, n in enumerate(done) if i != n), len(done))

  def write_chunk(self, index: int, lines: Sequence[dict]) -> None:
    if self._writes:
      fs.write_text(self._chunk(index), ''.join(json.dumps(l) + '\n' for l in lines))

  def finish(self, num_chunks: int) -> None:
    if self._writes:
      lines = ''.join(fs.read_text(self._chunk(i)) for i in range(num_chunks))
      fs.write_text(self.final_path, lines)
      fs.remove(self.parts_dir)


def _batches(
  examples: Sequence[Example], batch_size: int, input_length: int
) -> Iterator[tuple[np.ndarray, int]]:
  """(tokens [batch_size, input_length] zero-padded, number of real rows)."""
  for start in range(0, len(examples), batch_size):
    chunk = examples[start : start + batch_size]
    tokens = np.zeros((batch_size, input_length), np.int32)
    for i, ex in enumerate(chunk):
      tokens[i, : len(ex['tokens'])] = ex['tokens']
    yield tokens, len(chunk)


def _lines(examples, tokens, scores, vocabulary) -> list[dict]:
  lines = []
  for ex, decodes, decode_scores in zip(examples, tokens, scores):
    texts = [vocabulary.decode(_until_eos(d)) for d in decodes]
    line = {'inputs': ex['inputs'], 'prediction': texts[0], 'score': float(decode_scores[0])}
    if len(texts) > 1:
      line.update(predictions=texts, scores=[float(s) for s in decode_scores])
    if 'targets' in ex:
      line['targets'] = ex['targets']
    lines.append(line)
  return lines


def _until_eos(tokens) -> list[int]:
  out = []
  for t in np.asarray(tokens).tolist():
    if t == inference.EOS_ID:
      break
    out.append(t)
  return out


@gin.configurable(module='batch_inference')
def infer(
  *,
  checkpoint_path: str = gin.REQUIRED,
  output_dir: str = gin.REQUIRED,
  mixture_or_task_name: Optional[str] = None,
  mixture_or_task_module: Optional[str] = None,
  task_feature_lengths: Optional[Mapping[str, int]] = None,
  split: str = 'validation',
  input_file: Optional[str] = None,
  vocabulary_path: Optional[str] = None,
  batch_size: int = 32,
  chunk_batches: int = 10,
  base_checkpoint_path: Optional[str] = None,
  frozen_dtype: str = 'float32',
  decode: inference.DecodeConfig = inference.DecodeConfig(),
  partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
  progress_bar: bool = True,
) -> str:
  """Decodes a task split or an input file with a trained run (or a base checkpoint);
  returns the path of the finished JSONL file."""
  errors.require_macros(CHECKPOINT_PATH=checkpoint_path, INFER_OUTPUT_DIR=output_dir)
  checks.inference_values('batch_inference.infer', 'INFER_OUTPUT_DIR', locals())
  fs.check_output_dir(output_dir, 'INFER_OUTPUT_DIR')
  mesh = partition.make_mesh()
  partitioning.check_batch_size(batch_size, mesh)
  pinned = _started_step(checkpoint_path, output_dir)
  model_info = trained_model.load(
    checkpoint_path, base_checkpoint_path, frozen_dtype, mesh, step=pinned
  )
  task, lengths = trained_model.task_and_lengths(
    model_info, mixture_or_task_name, mixture_or_task_module, task_feature_lengths
  )
  if not lengths:
    raise UserError(
      'TASK_FEATURE_LENGTHS is not set and the checkpoint does not record '
      "one; pass e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, "
      "'targets': 128}\"."
    )
  config = model_info.config
  input_length = data.converter_lengths(lengths, config.prompt_length)['inputs']
  if input_file:
    # The file's text is tokenized as the task (given, else the run's) tokenizes its
    # inputs; VOCABULARY_PATH overrides, and a bare base checkpoint brings its own.
    if vocabulary_path or not task:
      vocabulary = vocabularies.sentencepiece(vocabulary_path or model_info.base_path)
    else:
      vocabulary = data.vocabulary(task)
    source = file_source(input_file, vocabulary, input_length)
  elif task:
    source = task_source(task, split, input_length)
  else:
    raise UserError(
      'Nothing to decode: set MIXTURE_OR_TASK_NAME or INPUT_FILE (the checkpoint records no task).'
    )
  vocabularies.check_fits(source.vocabulary, config.vocab_size, source.name)

  settings = {
    'checkpoint_path': checkpoint_path,
    'checkpoint_step': model_info.run.step if model_info.run else None,
    'split': split,
    'input_file': input_file,
    'batch_size': batch_size,
    'chunk_batches': chunk_batches,
    'decode': dataclasses.asdict(decode),
    'lengths': dict(lengths),
    'num_examples': len(source.examples),
  }
  final_path = fs.join(output_dir, f'{source.name}.jsonl')
  if fs.exists(final_path):
    _say(f'{final_path} is already complete; delete it to decode again.')
    return final_path
  output = ChunkedOutput(output_dir, source.name, settings)
  start_chunk = output.completed_chunks()
  output.start()
  if pinned is not None:
    _say(f'Continuing {output.final_path} with checkpoint step {pinned}, as it began.')
  model = models.EncoderDecoderModel(config)
  predict = jax.jit(
    functools.partial(inference.predict_batch, model, max_length=lengths['targets'], config=decode)
  )
  batch_sharding = partitioning.batch_sharding(mesh)
  chunk_size = batch_size * chunk_batches
  num_chunks = -(-len(source.examples) // chunk_size)
  bar = tqdm.tqdm(
    total=len(source.examples),
    initial=min(start_chunk * chunk_size, len(source.examples)),
    unit='ex',
    desc=f'infer {source.name}',
    disable=not progress_bar or not distributed.is_writer(),
    dynamic_ncols=True,
  )
  for chunk in range(start_chunk, num_chunks):
    examples = source.examples[chunk * chunk_size : (chunk + 1) * chunk_size]
    lines = []
    for tokens, real in _batches(examples, batch_size, input_length):
      placed = partitioning.place_batch({'tokens': tokens}, batch_sharding)['tokens']
      out, scores = distributed.fetch(predict(model_info.params, placed))
      lines += _lines(
        examples[len(lines) : len(lines) + real], out[:real], scores[:real], source.vocabulary
      )
      bar.update(real)
    output.write_chunk(chunk, lines)
  bar.close()
  output.finish(num_chunks)
  _say(f'{len(source.examples)} predictions -> {output.final_path}')
  return output.final_path


def _say(message: str) -> None:
  if distributed.is_writer():
    tqdm.tqdm.write(message)
