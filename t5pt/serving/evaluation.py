"""Inference evaluation with seqio's Evaluator: decode, postprocess, the task's metrics.

Entry point: python -m t5pt.eval (t5pt/eval.py).

Runs the task's predict metrics (accuracy, F1, exact match, ROUGE, BLEU: whatever the task
declares in `metric_fns`) on decodes and its score metrics on target log-likelihoods, and
writes `<task>-metrics.jsonl`, `<task>-<step>.jsonl` (each example's prediction) and
TensorBoard events to EVAL_OUTPUT_DIR (local or gs://). During training, RunEvaluator runs
the teacher-forced metrics and the same InferenceEvaluator every EVAL_PERIOD steps.

With TOOLS the model's calls run as it decodes (tool_decoding.py); the task's metrics score
the text without the call spans (what a reader sees), and `<task>-tool_use.jsonl` adds the
tool-use statistics (calls per example, the share of examples that call each tool, errors
and time-outs per tool; tools/statistics.py), `<task>-<step>-calls.jsonl` each example's
decode with its calls.
"""

import functools
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import seqio
import tqdm

import gin
from t5pt.checkpoints import opening
from t5pt.checkpoints import trained_model
from t5pt.model import models
from t5pt.model import steps
from t5pt.runtime import checks
from t5pt.runtime import data
from t5pt.runtime import distributed
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime import metrics_log
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.serving import ensemble
from t5pt.serving import ensemble_evaluation
from t5pt.serving import inference
from t5pt.serving import prompt_bank
from t5pt.serving import run_tool
from t5pt.serving import seqio_outputs
from t5pt.serving import tool_decoding
from t5pt.tools import registry
from t5pt.tools import syntax as syntax_lib
from t5pt.tools import statistics


class InferenceEvaluator:
  """seqio.Evaluator over one task or mixture, fed by t5pt's decoding and scoring."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    mesh,
    batch_size: int,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = 'validation',
    use_cached: bool = False,
    decode: inference.DecodeConfig = inference.DecodeConfig(),
    log_dir: Optional[str] = None,
    tensorboard: bool = True,
    num_examples: Optional[int] = None,
    tool_use: Optional[tool_decoding.ToolUse] = None,
  ):
    """Writes its results into `log_dir` when given (see OutputLogger); with `tool_use`,
    decodes running the calls the model writes."""
    data.get_provider(mixture_or_task_name)  # A clear error for unknown names.
    self._evaluator = seqio.Evaluator(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split,
      use_cached=use_cached,
      sequence_length=data.converter_lengths(task_feature_lengths, model.config.prompt_length),
      num_examples=num_examples,
      log_dir=log_dir,
      logger_cls=[functools.partial(seqio_outputs.OutputLogger, tensorboard=tensorboard)]
      if log_dir
      else (),
    )
    self._batch_size = batch_size
    self._sharding = partitioning.batch_sharding(mesh)
    self._log_dir = log_dir
    self._model, self._decode = model, decode
    self._max_length = task_feature_lengths['targets']
    self._tool_use = tool_use
    # Compiled once here, then reused at every evaluation of a training run.
    self._predict = jax.jit(
      functools.partial(
        inference.predict_batch, model, max_length=task_feature_lengths['targets'], config=decode
      )
    )
    self._score = jax.jit(functools.partial(inference.score_batch, model))

  @property
  def has_metrics(self) -> bool:
    return any(
      task.predict_metric_fns or task.score_metric_fns for task in self._evaluator.eval_tasks
    )

  def evaluate(self, params, step: Optional[int] = None) -> dict[str, dict[str, float]]:
    """{task name: {metric: value}} for the full (merged) parameter tree `params`."""

    def run(ds, fn):
      results = []
      for indices, batch in seqio_outputs.enumerated_batches(ds, self._batch_size):
        output = distributed.fetch(fn(partitioning.place_batch(batch, self._sharding)))
        results += [(int(i), output[row]) for row, i in enumerate(indices)]
      return results

    predict_fn = lambda ds: [
      (i, tokens[0].tolist())
      for i, tokens in run(ds, lambda b: self._predict(params, b['encoder_input_tokens'])[0])
    ]
    with_tools = {}
    if self._tool_use:
      predict_fn = functools.partial(self._predict_with_tools, params, with_tools)
    score_fn = lambda ds: [(i, float(s)) for i, s in run(ds, lambda b: self._score(params, b))]
    metrics, _ = self._evaluator.evaluate(
      compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn
    )
    results = {
      task: {name: seqio_outputs.scalar(value) for name, value in task_metrics.items()}
      for task, task_metrics in metrics.result().items()
    }
    for task, decoded in with_tools.items():
      stats = statistics.tool_use([row.calls for row in decoded], self._tool_use.tools)
      results.setdefault(task, {}).update({f'tools/{k}': v for k, v in stats.items()})
      _say(f'{task} tool use: {statistics.describe(stats)}')
      if self._log_dir and distributed.is_writer():
        seqio_outputs.write_tool_use(self._log_dir, task, step or 0, stats, decoded)
    return results

  def _predict_with_tools(self, params, with_tools: dict, ds) -> list[tuple[int, list[int]]]:
    """seqio's predict_fn with the calls run: each example's text without its call spans,
    as target tokens; each decode (with its calls) kept in with_tools[task]."""
    cached = self._evaluator.cached_model_datasets
    task = next(name for name, task_ds in cached.items() if task_ds is ds)
    vocabulary = seqio.get_mixture_or_task(task).output_features['targets'].vocabulary
    decoded = []
    for indices, batch in seqio_outputs.enumerated_batches(ds, self._batch_size):
      placed = partitioning.place_batch(batch, self._sharding)['encoder_input_tokens']
      rows = tool_decoding.decode_with_tools(
        self._model, params, placed, vocabulary, self._max_length, self._tool_use, self._decode
      )
      decoded += [(int(i), rows[row]) for row, i in enumerate(indices)]
    decoded.sort(key=lambda pair: pair[0])
    with_tools[task] = [row for _, row in decoded]
    return [(i, self._padded(vocabulary.encode(row.text_without_calls))) for i, row in decoded]

  def _padded(self, tokens: list[int]) -> list[int]:
    """[max_length] tokens, as seqio stacks predictions."""
    return (tokens + [0] * self._max_length)[: self._max_length]


class RunEvaluator:
  """A training run's evaluation on its eval split: teacher-forced loss and accuracies
  and, when the task declares metric_fns, decoded metrics from InferenceEvaluator; both
  logged to the run's metrics, the decodes to MODEL_DIR/inference_eval/ as t5x does."""

  def __init__(self, setup, log: metrics_log.MetricsLog):
    """`setup`: a run_setup.RunSetup."""
    config = setup.config
    self._setup, self._log = setup, log
    self._eval_step = jax.jit(steps.build_eval_step(setup.model))
    self._decoded = None
    if config.infer_eval and config.eval_split:
      decoded = InferenceEvaluator(
        setup.model,
        setup.mesh,
        config.batch_size,
        config.mixture_or_task_name,
        config.task_feature_lengths,
        config.eval_split,
        config.use_cached_tasks,
        log_dir=fs.join(config.model_dir, 'inference_eval'),
        tensorboard=False,
      )
      self._decoded = decoded if decoded.has_metrics else None

  def evaluate(self, step: int, params, suffix: str = '') -> dict:
    """{'eval<suffix>': metrics, 'infer_eval<suffix>': {task: metrics}} for the trainable
    `params` at `step`; empty without an eval split."""
    setup = self._setup
    if setup.eval_ds is None:
      return {}
    sums = None
    for batch in data.iterate_batches(setup.eval_ds, setup.config.batch_size, drop_remainder=False):
      m = self._eval_step(params, setup.frozen_tree, setup.to_device(batch))
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    teacher_forced = models.summarize(jax.device_get(sums))
    self._log.write('eval', step, teacher_forced)
    _say(f'eval @ step {step}: {metrics_log.describe(teacher_forced)}')
    results = {'eval' + suffix: teacher_forced}
    if self._decoded:
      decoded = self._decoded.evaluate(steps.combine(setup.frozen_tree, params), step)
      flat = {
        (f'{task}/{name}' if len(decoded) > 1 else name): value
        for task, values in decoded.items()
        for name, value in values.items()
      }
      self._log.write('infer_eval', step, flat)
      _say(f'decoded eval @ step {step}: {metrics_log.describe(flat)}')
      results['infer_eval' + suffix] = decoded
    return results


def _say(message: str) -> None:
  """Prints above the progress bar (process 0 only)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


@gin.configurable(module='evaluation')
def evaluate(
  *,
  checkpoint_path: str = gin.REQUIRED,
  output_dir: str = gin.REQUIRED,
  mixture_or_task_name: Optional[str] = None,
  mixture_or_task_module: Optional[str] = None,
  task_feature_lengths: Optional[Mapping[str, int]] = None,
  split: str = 'validation',
  batch_size: int = 32,
  base_checkpoint_path: Optional[str] = None,
  frozen_dtype: str = 'float32',
  use_cached_tasks: bool = False,
  decode: inference.DecodeConfig = inference.DecodeConfig(),
  partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
  ensemble_runs: Union[Mapping[str, str], Sequence[str], None] = None,
  ensemble_method: str = 'vote',
  ensemble_options: Optional[Sequence[str]] = None,
  tools: Optional[Mapping[str, object]] = None,
  tool_call_top_k: int = 1,
  max_tool_calls: int = 4,
  tool_syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER,
  tool_call_style: str = 'toolformer',
) -> dict:
  """Evaluates a trained run (or a base checkpoint) on a task split; returns the metrics
  {task: {metric: value}} (with TOOLS, 'tools/...' statistics too). With ENSEMBLE instead:
  {member or 'ensemble': {task: ...}}."""
  which = checks.one_model(CHECKPOINT_PATH=checkpoint_path, ENSEMBLE=ensemble_runs)
  errors.require_macros(EVAL_OUTPUT_DIR=output_dir)
  checks.inference_values('evaluation.evaluate', 'EVAL_OUTPUT_DIR', locals())
  use = tool_decoding.ToolUse.from_settings(
    tools,
    tool_call_top_k,
    max_tool_calls,
    decode,
    'evaluation.evaluate',
    tool_syntax,
    tool_call_style,
  )
  if use and which == 'ENSEMBLE':
    raise UserError('TOOLS evaluates one model (CHECKPOINT_PATH); ENSEMBLE does not take it.')
  ensemble.check_method(ensemble_method, ensemble_options)
  fs.check_output_dir(output_dir, 'EVAL_OUTPUT_DIR')
  mesh = partition.make_mesh()
  partitioning.check_batch_size(batch_size, mesh)
  if which == 'ENSEMBLE':
    bank = prompt_bank.PromptBank(
      ensemble_runs, 'ENSEMBLE', base_checkpoint_path, frozen_dtype, mesh
    )
    task, lengths = bank.task_and_lengths(
      mixture_or_task_name, mixture_or_task_module, task_feature_lengths
    )
    _require_task(task, lengths)
    results = ensemble_evaluation.evaluate(
      bank,
      output_dir,
      task,
      lengths,
      split,
      batch_size,
      use_cached_tasks,
      decode,
      ensemble_method,
      ensemble_options,
    )
    for label, tasks in results.items():
      for name, values in tasks.items():
        _say(f'{label:>12} {name}: {metrics_log.describe(dict(sorted(values.items())))}')
    _say(f'metrics -> {output_dir}/<member>/, {output_dir}/ensemble/')
    return results
  loaded = opening.load(checkpoint_path, base_checkpoint_path, frozen_dtype, mesh)
  task, lengths = trained_model.task_and_lengths(
    loaded, mixture_or_task_name, mixture_or_task_module, task_feature_lengths
  )
  _require_task(task, lengths)
  if use:
    targets = seqio.get_mixture_or_task(task).output_features['targets'].vocabulary
    registry.check_tools(use.tools, use.syntax, targets, inline=use.inline)
    run_tool.share_loaded(use.tools, loaded, mesh)
  evaluator = InferenceEvaluator(
    models.EncoderDecoderModel(loaded.config),
    mesh,
    batch_size,
    task,
    lengths,
    split,
    use_cached_tasks,
    decode,
    log_dir=output_dir,
    tool_use=use,
  )
  if not evaluator.has_metrics:
    raise UserError(
      f'{task!r} declares no metric_fns, so there is nothing to evaluate; '
      'use ./infer.sh to decode it.'
    )
  fs.makedirs(output_dir)
  step = loaded.run.step if loaded.run else 0
  results = evaluator.evaluate(loaded.params, step)
  for name, values in results.items():
    _say(f'{name} @ step {step}: {metrics_log.describe(dict(sorted(values.items())))}')
  _say(f'metrics -> {output_dir}')
  return results


def _require_task(task, lengths) -> None:
  if not task or not lengths:
    raise UserError(
      'Set MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS (the checkpoint does not record them).'
    )
