"""Batch inference into JSONL, t5x-style (entry points: infer.sh, python -m t5pt.infer).

Decodes a task split (default: the run's own task, validation split) or a file of inputs
(.txt: one input per line; .jsonl: objects with "inputs" and optionally "targets") into
INFER_OUTPUT_DIR/<task>-<split>.jsonl (or <file stem>-<extension>.jsonl), one line per
example in input order:

  {"inputs": ..., "prediction": ..., "score": ..., "targets": ...}

(with "predictions"/"scores" lists too when num_decodes > 1). Every line is strict JSON: a
score is a log-likelihood, null when the model gives the decode no probability at all
(-inf); a NaN score means the model computes NaN (e.g. T5 in float16 overflows) and stops
the run with a message instead. The model is one run or base checkpoint (CHECKPOINT_PATH),
several prompts on one base (PROMPTS: each .jsonl line names its "prompt", and its output
line says which it used; see prompt_bank.py), or a prompt ensemble (ENSEMBLE: lines add
"votes" and each member's "prediction" and "score"; see ensemble.py). Every input is read
and checked before the base is loaded. Results are written in
chunks to <name>.jsonl.parts/; an interrupted run continues after the last complete chunk,
and the final file appears in one rename once everything is decoded, so a finished file is
never half-written.
"""

import dataclasses
import functools
import json
import math
import posixpath
from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np
import seqio
import tqdm

import gin
from t5pt.checkpoints import opening
from t5pt.checkpoints import trained_model
from t5pt.model import models
from t5pt.runtime import checks
from t5pt.runtime import data
from t5pt.runtime import distributed
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime import vocabularies
from t5pt.runtime.errors import UserError
from t5pt.serving import ensemble
from t5pt.serving import inference
from t5pt.serving import prompt_bank

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


def file_source(
  path: str,
  vocabulary: seqio.Vocabulary,
  input_length: int,
  prompt_names: Optional[Sequence[str]] = None,
) -> Source:
  """A .txt (one input per line) or .jsonl ({"inputs": ..., "targets": ..., "prompt": ...})
  file. `prompt_names`: the PROMPTS a line may name in "prompt" (None: lines name none);
  with a single prompt, lines that name none use it."""
  return tokenized(path, read_input_file(path, prompt_names), vocabulary, input_length)


def read_input_file(path: str, prompt_names: Optional[Sequence[str]] = None) -> list[dict]:
  """The examples of INPUT_FILE `path` as file_source reads them, not yet tokenized (no
  model is needed to read and check them): {'inputs', optional 'targets' and 'prompt'}.
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


def _started(output_dir: str, model: Mapping) -> Optional[dict]:
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


@dataclasses.dataclass
class Served:
  """The model infer decodes with, whichever way it was named.

  `identity`: the settings that name it (an unfinished output continues only with the same);
  `input_length`: the longest input in tokens, after the prompt; `lines`: a batch of at most
  batch_size examples -> their output lines."""

  identity: dict
  steps: dict
  task: Optional[str]
  lengths: dict
  input_length: int
  vocabulary: Callable[[], seqio.Vocabulary]  # INPUT_FILE's tokenizer
  vocab_size: int
  lines: Callable[[Sequence[Example], seqio.Vocabulary], list[dict]]
  check: Callable[[seqio.Vocabulary], object] = lambda vocabulary: None  # the source's


def _one_model(checkpoint_path, output_dir, args, mesh, batch_size, decode) -> Served:
  """CHECKPOINT_PATH: one run (any tuning method) or a bare base checkpoint."""
  identity = {'checkpoint_path': checkpoint_path}
  started = _started(output_dir, identity)
  pinned = started.get('checkpoint_step') if started else None
  loaded = opening.load(
    checkpoint_path, args['base_checkpoint_path'], args['frozen_dtype'], mesh, step=pinned
  )
  task, lengths = trained_model.task_and_lengths(
    loaded,
    args['mixture_or_task_name'],
    args['mixture_or_task_module'],
    args['task_feature_lengths'],
  )
  lengths = _require_lengths(lengths)
  input_length = data.converter_lengths(lengths, loaded.config.prompt_length)['inputs']

  def vocabulary():
    # The file's text is tokenized as the task (given, else the run's) tokenizes its
    # inputs; VOCABULARY_PATH overrides, and a bare base checkpoint brings its own.
    if args['vocabulary_path']:
      return vocabularies.sentencepiece(args['vocabulary_path'], setting='VOCABULARY_PATH')
    if not task:
      return vocabularies.sentencepiece(loaded.base_path, setting='the base checkpoint')
    return data.vocabulary(task)

  model = models.EncoderDecoderModel(loaded.config)
  predict = jax.jit(
    functools.partial(inference.predict_batch, model, max_length=lengths['targets'], config=decode)
  )
  sharding = partitioning.batch_sharding(mesh)

  def lines(examples, vocab):
    tokens = _pad_rows([ex['tokens'] for ex in examples], batch_size, input_length)
    placed = partitioning.place_batch({'tokens': tokens}, sharding)['tokens']
    out, scores = distributed.fetch(predict(loaded.params, placed))
    return _lines(examples, out, scores, vocab)

  step = loaded.run.step if loaded.run else None
  return Served(
    identity=identity,
    steps={'checkpoint_step': step},
    task=task,
    lengths=lengths,
    input_length=input_length,
    vocabulary=vocabulary,
    vocab_size=loaded.config.vocab_size,
    lines=lines,
  )


def _prompt_bank(
  macro, entries, output_dir, args, mesh, batch_size, decode, method, options, before_load
):
  """PROMPTS (each example with the prompt it names) or ENSEMBLE (each with every prompt),
  on one frozen base; `before_load()` once the prompts are checked, before the base loads."""
  named = prompt_bank.named_entries(entries, macro)
  identity = {macro.lower(): named}
  if macro == 'ENSEMBLE':
    identity.update(ensemble_method=method, ensemble_options=options)
  started = _started(output_dir, identity)
  bank = prompt_bank.PromptBank(
    named,
    macro,
    args['base_checkpoint_path'],
    args['frozen_dtype'],
    mesh,
    steps=started.get('steps') if started else None,
    before_load=before_load,
  )
  task, lengths = bank.task_and_lengths(
    args['mixture_or_task_name'],
    args['mixture_or_task_module'],
    args['task_feature_lengths'],
    task_from_runs=macro == 'ENSEMBLE' and not args['input_file'],  # the source
  )
  lengths = _require_lengths(lengths)
  bank.check_fits(lengths['inputs'])
  input_length = lengths['inputs'] - min(bank.prompt_length(n) for n in bank.names)

  def vocabulary():
    if args['vocabulary_path']:
      return vocabularies.sentencepiece(args['vocabulary_path'], setting='VOCABULARY_PATH')
    if task:
      return data.vocabulary(task)
    return bank.common_vocabulary() or vocabularies.sentencepiece(
      bank.base_path, setting='the base checkpoint'
    )

  max_length = lengths['targets']

  def mixed_lines(examples, vocab):
    tokens, ids = bank.rows(
      [ex['tokens'] for ex in examples],
      [ex['prompt'] for ex in examples],
      lengths['inputs'],
      batch_size,
    )
    out, scores = bank.predict(tokens, ids, max_length, decode)
    lines = _lines(examples, out, scores, vocab)
    return [{**line, 'prompt': ex['prompt']} for line, ex in zip(lines, examples)]

  def option_ids(vocab):
    return ensemble.option_ids(options, vocab, max_length)

  def ensemble_lines(examples, vocab):
    decoded = ensemble.decode(
      bank,
      [ex['tokens'] for ex in examples],
      batch_size,
      lengths['inputs'],
      max_length,
      decode,
      method,
      option_ids(vocab),
    )
    lines = []
    for i, ex in enumerate(examples):
      members = {
        name: {'prediction': vocab.decode(tokens), 'score': _score(score, ex)}
        for name, tokens, score in zip(bank.names, decoded.members[i], decoded.member_scores[i])
      }
      line = {
        'inputs': ex['inputs'],
        'prediction': vocab.decode(decoded.tokens[i]),
        'score': _score(decoded.score[i], ex),
        'votes': int(decoded.votes[i]),
        'members': members,
      }
      if 'targets' in ex:
        line['targets'] = ex['targets']
      lines.append(line)
    return lines

  mixed = macro == 'PROMPTS'
  return Served(
    identity=identity,
    steps={'steps': bank.steps()},
    task=task,
    lengths=lengths,
    input_length=input_length,
    vocabulary=vocabulary,
    vocab_size=bank.config.vocab_size,
    lines=mixed_lines if mixed else ensemble_lines,
    check=option_ids,
  )


def _require_lengths(lengths) -> dict:
  if not lengths:
    raise UserError(
      'TASK_FEATURE_LENGTHS is not set and the checkpoint does not record '
      "one; pass e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, "
      "'targets': 128}\"."
    )
  return dict(lengths)


def _pad_rows(rows: Sequence[Sequence[int]], batch_size: int, length: int) -> np.ndarray:
  """Token lists -> [batch_size, length], zero-padded (rows past the list too)."""
  tokens = np.zeros((batch_size, length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, : len(row)] = row
  return tokens


def _lines(examples, tokens, scores, vocabulary) -> list[dict]:
  lines = []
  for ex, decodes, decode_scores in zip(examples, tokens, scores):
    texts = [vocabulary.decode(inference.until_eos(d)) for d in decodes]
    scores = [_score(s, ex) for s in decode_scores]
    line = {'inputs': ex['inputs'], 'prediction': texts[0], 'score': scores[0]}
    if len(texts) > 1:
      line.update(predictions=texts, scores=scores)
    if 'targets' in ex:
      line['targets'] = ex['targets']
    lines.append(line)
  return lines


def _score(value, example: Example) -> Optional[float]:
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


@gin.configurable(module='batch_inference')
def infer(
  *,
  checkpoint_path: Optional[str] = None,
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
  prompts: Optional[Mapping[str, str]] = None,
  ensemble_runs: Union[Mapping[str, str], Sequence[str], None] = None,
  ensemble_method: str = 'vote',
  ensemble_options: Optional[Sequence[str]] = None,
  progress_bar: bool = True,
) -> str:
  """Decodes a task split or an input file with a trained run (or a base checkpoint),
  several prompts on one base (PROMPTS), or a prompt ensemble (ENSEMBLE); returns the path
  of the finished JSONL file. Every setting and input (INPUT_FILE, the PROMPTS and ENSEMBLE
  entries) is checked before the base is loaded."""
  for macro, given in (('PROMPTS', prompts), ('ENSEMBLE', ensemble_runs)):
    if given is not None and not given:
      prompt_bank.named_entries(given, macro)  # Says what is wrong: {} or [] names nothing.
  which = checks.one_model(CHECKPOINT_PATH=checkpoint_path, PROMPTS=prompts, ENSEMBLE=ensemble_runs)
  errors.require_macros(INFER_OUTPUT_DIR=output_dir)
  checks.inference_values('batch_inference.infer', 'INFER_OUTPUT_DIR', locals())
  ensemble.check_method(ensemble_method, ensemble_options)
  fs.check_output_dir(output_dir, 'INFER_OUTPUT_DIR')
  mesh = partition.make_mesh()
  partitioning.check_batch_size(batch_size, mesh)
  entries = {'PROMPTS': prompts, 'ENSEMBLE': ensemble_runs}.get(which)
  named = prompt_bank.named_entries(entries, which) if entries is not None else None
  if which == 'PROMPTS' and not input_file:
    raise UserError(
      'PROMPTS serves the prompts an INPUT_FILE\'s lines name ({"inputs": ..., "prompt": '
      '"name"}); set INPUT_FILE, or decode a task with CHECKPOINT_PATH or ENSEMBLE.'
    )
  records = []

  def read_inputs():
    # Read and checked before the base is loaded; tokenized once the model says how.
    if input_file:
      records.extend(read_input_file(input_file, list(named) if which == 'PROMPTS' else None))

  args = dict(
    base_checkpoint_path=base_checkpoint_path,
    frozen_dtype=frozen_dtype,
    mixture_or_task_name=mixture_or_task_name,
    mixture_or_task_module=mixture_or_task_module,
    task_feature_lengths=task_feature_lengths,
    vocabulary_path=vocabulary_path,
    input_file=input_file,
  )
  if which == 'CHECKPOINT_PATH':
    read_inputs()
    served = _one_model(checkpoint_path, output_dir, args, mesh, batch_size, decode)
  else:  # The prompts are read and checked first, then the inputs.
    served = _prompt_bank(
      which,
      entries,
      output_dir,
      args,
      mesh,
      batch_size,
      decode,
      ensemble_method,
      ensemble_options,
      before_load=read_inputs,
    )
  if input_file:
    source = tokenized(input_file, records, served.vocabulary(), served.input_length)
  elif served.task:
    source = task_source(served.task, split, served.input_length)
  else:
    raise UserError(
      'Nothing to decode: set MIXTURE_OR_TASK_NAME or INPUT_FILE (the checkpoint records no task).'
    )
  vocabularies.check_fits(source.vocabulary, served.vocab_size, source.name)
  served.check(source.vocabulary)

  settings = {
    **served.identity,
    **served.steps,
    'split': split,
    'input_file': input_file,
    'batch_size': batch_size,
    'chunk_batches': chunk_batches,
    'decode': dataclasses.asdict(decode),
    'lengths': served.lengths,
    'num_examples': len(source.examples),
  }
  final_path = fs.join(output_dir, f'{source.name}.jsonl')
  if fs.exists(final_path):
    _say(f'{final_path} is already complete; delete it to decode again.')
    return final_path
  output = ChunkedOutput(output_dir, source.name, settings)  # refuses other settings
  start_chunk = output.completed_chunks()
  output.start()
  if start_chunk:
    _say(f'Continuing {output.final_path} with the checkpoint steps it began with: {served.steps}.')
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
    for start in range(0, len(examples), batch_size):
      batch = examples[start : start + batch_size]
      lines += served.lines(batch, source.vocabulary)
      bar.update(len(batch))
    output.write_chunk(chunk, lines)
  bar.close()
  output.finish(num_chunks)
  _say(f'{len(source.examples)} predictions -> {output.final_path}')
  return output.final_path


def _say(message: str) -> None:
  if distributed.is_writer():
    tqdm.tqdm.write(message)
