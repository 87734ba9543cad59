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
"votes" and each member's "prediction" and "score"; see ensemble.py). With TOOLS (one
model or PROMPTS), the model's calls run as it decodes (tool_decoding.py) and each line
adds "prediction_without_calls" and its "calls". Every input is read
and checked before the base is loaded. Results are written in chunks to
<name>.jsonl.parts/; an interrupted run continues after the last complete chunk, and the
final file appears in one rename once everything is decoded, so a finished file is never
half-written. Reading the inputs and writing the output: infer_io.py.
"""

import dataclasses
import functools
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
from t5pt.serving import infer_io
from t5pt.serving import inference
from t5pt.serving import prompt_bank
from t5pt.serving import run_tool
from t5pt.serving import tool_decoding
from t5pt.tools import base
from t5pt.tools import registry
from t5pt.tools import statistics
from t5pt.tools import syntax as syntax_lib


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
  lines: Callable[[Sequence[infer_io.Example], seqio.Vocabulary], list[dict]]
  check: Callable[[seqio.Vocabulary], object] = lambda vocabulary: None  # the source's


def _one_model(checkpoint_path, output_dir, args, mesh, batch_size, decode, use=None) -> Served:
  """CHECKPOINT_PATH: one run (any tuning method) or a bare base checkpoint; with `use`
  (TOOLS), decoded running the calls it writes."""
  identity = {'checkpoint_path': checkpoint_path}
  started = infer_io.started(output_dir, identity)
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

  if use:
    run_tool.share_loaded(use.tools, loaded, mesh)
  model = models.EncoderDecoderModel(loaded.config)
  predict = jax.jit(
    functools.partial(inference.predict_batch, model, max_length=lengths['targets'], config=decode)
  )
  sharding = partitioning.batch_sharding(mesh)

  def lines(examples, vocab):
    tokens = _pad_rows([ex['tokens'] for ex in examples], batch_size, input_length)
    placed = partitioning.place_batch({'tokens': tokens}, sharding)['tokens']
    if use:
      decoded = tool_decoding.decode_with_tools(
        model, loaded.params, placed, vocab, lengths['targets'], use, decode
      )
      return infer_io.tool_lines(examples, decoded)
    out, scores = distributed.fetch(predict(loaded.params, placed))
    return infer_io.output_lines(examples, out, scores, vocab)

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
  macro, entries, output_dir, args, mesh, batch_size, decode, method, options, before_load, use
):
  """PROMPTS (each example with the prompt it names; with `use`, running the calls it
  writes) or ENSEMBLE (each with every prompt), on one frozen base; `before_load()` once
  the prompts are checked, before the base loads."""
  named = prompt_bank.named_entries(entries, macro)
  identity = {macro.lower(): named}
  if macro == 'ENSEMBLE':
    identity.update(ensemble_method=method, ensemble_options=options)
  started = infer_io.started(output_dir, identity)
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
  if use:
    run_tool.share_base(use.tools, bank.config, bank.params, bank.base_path, mesh)
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
    if use:
      decoded = bank.decode_with_tools(tokens, ids, max_length, decode, use, vocab)
      lines = infer_io.tool_lines(examples, decoded)
    else:
      out, scores = bank.predict(tokens, ids, max_length, decode)
      lines = infer_io.output_lines(examples, out, scores, vocab)
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
        name: {'prediction': vocab.decode(tokens), 'score': infer_io.line_score(score, ex)}
        for name, tokens, score in zip(bank.names, decoded.members[i], decoded.member_scores[i])
      }
      line = {
        'inputs': ex['inputs'],
        'prediction': vocab.decode(decoded.tokens[i]),
        'score': infer_io.line_score(decoded.score[i], ex),
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
  tools: Optional[Mapping[str, object]] = None,
  tool_call_top_k: int = 1,
  max_tool_calls: int = 4,
  tool_syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER,
  tool_call_style: str = 'toolformer',
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
  use = tool_decoding.ToolUse.from_settings(
    tools,
    tool_call_top_k,
    max_tool_calls,
    decode,
    'batch_inference.infer',
    tool_syntax,
    tool_call_style,
  )
  if use and which == 'ENSEMBLE':
    raise UserError('TOOLS decodes with CHECKPOINT_PATH or PROMPTS; ENSEMBLE does not take it.')
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
      records.extend(
        infer_io.read_input_file(input_file, list(named) if which == 'PROMPTS' else None)
      )

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
    served = _one_model(checkpoint_path, output_dir, args, mesh, batch_size, decode, use)
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
      use=use,
    )
  if input_file:
    source = infer_io.tokenized(input_file, records, served.vocabulary(), served.input_length)
  elif served.task:
    source = infer_io.task_source(served.task, split, served.input_length)
  else:
    raise UserError(
      'Nothing to decode: set MIXTURE_OR_TASK_NAME or INPUT_FILE (the checkpoint records no task).'
    )
  vocabularies.check_fits(source.vocabulary, served.vocab_size, source.name)
  served.check(source.vocabulary)
  if use:
    registry.check_tools(use.tools, use.syntax, source.vocabulary, inline=use.inline)

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
  if use:  # An output begun with other tools does not continue with these.
    settings.update(
      tools=sorted(use.tools),
      tool_call_top_k=use.call_top_k,
      max_tool_calls=use.max_calls,
      tool_syntax=dataclasses.asdict(use.syntax),
      tool_call_style='inline' if use.inline else 'toolformer',
    )
  final_path = fs.join(output_dir, f'{source.name}.jsonl')
  if fs.exists(final_path):
    _say(f'{final_path} is already complete; delete it to decode again.')
    return final_path
  output = infer_io.ChunkedOutput(output_dir, source.name, settings)  # refuses other settings
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
  calls = []  # with TOOLS: each line's calls, for the summary
  for chunk in range(start_chunk, num_chunks):
    examples = source.examples[chunk * chunk_size : (chunk + 1) * chunk_size]
    lines = []
    for start in range(0, len(examples), batch_size):
      batch = examples[start : start + batch_size]
      lines += served.lines(batch, source.vocabulary)
      bar.update(len(batch))
    output.write_chunk(chunk, lines)
    calls += [[base.CallResult(**c) for c in line['calls']] for line in lines if use]
  bar.close()
  output.finish(num_chunks)
  _say(f'{len(source.examples)} predictions -> {output.final_path}')
  if calls:
    used = statistics.describe(statistics.tool_use(calls, use.tools))
    _say(f'tool use ({len(calls)} inputs decoded now): {used}')
  return output.final_path


def _say(message: str) -> None:
  if distributed.is_writer():
    tqdm.tqdm.write(message)
