"""t5pt.eval of a prompt ensemble: the task's metrics for every member and for the ensemble.

Every eval example is decoded with all K prompts in one batch (ensemble.decode); seqio's
Evaluator then scores the K members' predictions and the combined one with the task's
metric_fns, from the same decodes. Results go to EVAL_OUTPUT_DIR/<member>/ and
EVAL_OUTPUT_DIR/ensemble/, each laid out as a single run's evaluation.
"""

import functools
from typing import Mapping, Optional, Sequence

import seqio

from t5pt.runtime import data
from t5pt.runtime.errors import UserError
from t5pt.serving import ensemble
from t5pt.serving import inference
from t5pt.serving import prompt_bank
from t5pt.serving import seqio_outputs

ENSEMBLE = 'ensemble'  # the label (and subdirectory) of the combined predictions


def evaluate(
  bank: prompt_bank.PromptBank,
  output_dir: str,
  task: str,
  lengths: Mapping[str, int],
  split: str,
  batch_size: int,
  use_cached: bool,
  decode: inference.DecodeConfig,
  method: str,
  options: Optional[Sequence[str]],
) -> dict[str, dict[str, dict[str, float]]]:
  """{member name or 'ensemble': {task: {metric: value}}}."""
  if ENSEMBLE in bank.names:
    raise UserError(f'ENSEMBLE names a member {ENSEMBLE!r}; that name is the combined result.')
  bank.check_fits(lengths['inputs'])
  shortest = min(bank.prompt_length(n) for n in bank.names)
  loggers = []

  def make_logger(output_dir):
    loggers.append(seqio_outputs.OutputLogger(output_dir))
    return loggers[-1]

  evaluator = seqio.Evaluator(
    mixture_or_task_name=task,
    feature_converter=seqio.EncDecFeatureConverter(pack=False),
    eval_split=split,
    use_cached=use_cached,
    sequence_length=data.converter_lengths(lengths, shortest),
    log_dir=output_dir,
    logger_cls=[make_logger],
  )
  if not any(t.predict_metric_fns or t.score_metric_fns for t in evaluator.eval_tasks):
    raise UserError(
      f'{task!r} declares no metric_fns, so there is nothing to evaluate; use ./infer.sh.'
    )
  option_ids = {
    t.name: ensemble.option_ids(
      options, t.output_features['targets'].vocabulary, lengths['targets']
    )
    for t in evaluator.eval_tasks
  }
  outputs = {}
  for t in evaluator.eval_tasks:
    outputs[t.name] = _decode_task(
      bank,
      evaluator.cached_model_datasets[t.name],
      batch_size,
      lengths,
      decode,
      method,
      option_ids[t.name],
      scores=bool(t.score_metric_fns),
    )
  # The Evaluator hands each task's cached dataset to the model functions.
  task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}
  results = {}
  for label in [*bank.names, ENSEMBLE]:
    for logger in loggers:
      logger.subdirectory = label
    output = lambda kind, ds, label=label: outputs[task_of[id(ds)]][kind][label]
    metrics, _ = evaluator.evaluate(
      compute_metrics=True,
      step=bank.steps().get(label) or 0,  # a member's checkpoint step; 0 for the ensemble
      predict_fn=functools.partial(output, 'predictions'),
      score_fn=functools.partial(output, 'scores'),
    )
    # Before the next label: seqio computes metrics (and logs them) in a thread.
    results[label] = {
      name: {metric: seqio_outputs.scalar(value) for metric, value in values.items()}
      for name, values in metrics.result().items()
    }
  return results


def _decode_task(bank, ds, batch_size, lengths, decode, method, option_ids, scores: bool):
  """{'predictions' | 'scores': {label: [(example index, tokens or log-likelihood)]}} for
  every member and the ensemble, over one task's enumerated eval dataset."""
  labels = [*bank.names, ENSEMBLE]
  predictions = {label: [] for label in labels}
  likelihoods = {label: [] for label in labels}
  for indices, batch in seqio_outputs.enumerated_batches(ds, batch_size):
    inputs = [
      inference.until_eos(row) + [inference.EOS_ID] for row in batch['encoder_input_tokens']
    ]
    inputs = inputs[: len(indices)]
    decoded = ensemble.decode(
      bank, inputs, batch_size, lengths['inputs'], lengths['targets'], decode, method, option_ids
    )
    # As the single-run path: each decode as the decoder's row of the targets length, so
    # seqio gets one shape however long each member's decode is (EOS first, none at all).
    row_of = lambda tokens: ensemble.decoder_row(tokens, lengths['targets']).tolist()
    for row, index in enumerate(indices):
      for j, name in enumerate(bank.names):
        predictions[name].append((index, row_of(decoded.members[row][j])))
      predictions[ENSEMBLE].append((index, row_of(decoded.tokens[row])))
    if scores:
      per_member = ensemble.target_scores(
        bank, inputs, batch['decoder_target_tokens'], batch_size, lengths['inputs']
      )
      for row, index in enumerate(indices):
        for j, name in enumerate(bank.names):
          likelihoods[name].append((index, float(per_member[row, j])))
        # The ensemble's log-likelihood of the target: the mean over its members.
        likelihoods[ENSEMBLE].append((index, float(per_member[row].mean())))
  return {'predictions': predictions, 'scores': likelihoods}
