"""Inference evaluation: t5pt.eval's seqio metrics, and the same evaluation during training."""

import glob
import json

import pytest
import seqio

import gin
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.serving import evaluation
from tests.conftest import run_module, train_in_process
from tests.test_infer import infer_in_process

TASK = 'synthetic_heldout_max'


def eval_in_process(output_dir, **macros) -> dict:
  gin.clear_config()
  gin_utils.parse(
    ['gin/eval.gin'],
    [f'EVAL_OUTPUT_DIR = {str(output_dir)!r}'] + [f'{k} = {v!r}' for k, v in macros.items()],
  )
  try:
    return evaluation.evaluate()
  finally:
    gin.clear_config()


def _exact_match_of_infer_output(path) -> float:
  with open(path) as f:
    lines = [json.loads(l) for l in f]
  return 100.0 * sum(l['prediction'] == l['targets'] for l in lines) / len(lines)


def test_eval_metrics_agree_with_infer_output_and_are_logged(prompt_run, tmp_path):
  metrics = eval_in_process(tmp_path / 'eval', CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16)
  assert list(metrics) == [TASK]
  predictions = infer_in_process(tmp_path / 'infer', CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16)
  assert metrics[TASK]['sequence_accuracy'] == pytest.approx(
    _exact_match_of_infer_output(predictions)
  )
  with open(tmp_path / 'eval' / f'{TASK}-metrics.jsonl') as f:
    logged = [json.loads(l) for l in f]
  assert logged[-1]['sequence_accuracy'] == pytest.approx(metrics[TASK]['sequence_accuracy'])
  (per_example,) = glob.glob(str(tmp_path / 'eval' / f'{TASK}-*[0-9].jsonl'))
  with open(per_example) as f:
    lines = [json.loads(l) for l in f]
  with open(predictions) as f:
    decoded = [json.loads(l)['prediction'] for l in f]
  assert [l['prediction'] for l in lines] == decoded  # one line per example, as seqio saw it
  assert glob.glob(str(tmp_path / 'eval' / '**' / 'events.out.tfevents.*'), recursive=True)


def test_training_runs_the_same_decoded_evaluation(base_checkpoint, tmp_path):
  model_dir = tmp_path / 'run'
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    str(model_dir),
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=6,
    CHECKPOINT_PERIOD=6,
    EVAL_PERIOD=3,
    BATCH_SIZE=16,
    INFER_EVAL=True,
  )
  with open(model_dir / 'metrics.jsonl') as f:
    decoded = [json.loads(l) for l in f if '"infer_eval"' in l]
  assert [l['step'] for l in decoded] == [0, 3, 6]
  final = eval_in_process(tmp_path / 'eval', CHECKPOINT_PATH=str(model_dir), BATCH_SIZE=16)
  assert decoded[-1]['sequence_accuracy'] == pytest.approx(final[TASK]['sequence_accuracy'])
  assert summary['infer_eval'][TASK]['sequence_accuracy'] == pytest.approx(
    final[TASK]['sequence_accuracy']
  )


def test_eval_cli_requires_its_output_dir(prompt_run):
  result = run_module('t5pt.eval', f"--gin.CHECKPOINT_PATH='{prompt_run}'")
  assert result.returncode == 2
  assert 'EVAL_OUTPUT_DIR is not set' in result.stderr


def test_task_without_metrics_is_refused(prompt_run, tmp_path):
  heldout = seqio.get_mixture_or_task(TASK)
  name = 'synthetic_heldout_max_without_metrics'
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
      name,
      source=heldout.source,
      preprocessors=heldout.preprocessors,
      output_features=heldout.output_features,
    )
  with pytest.raises(UserError, match='declares no metric_fns'):
    eval_in_process(tmp_path, CHECKPOINT_PATH=prompt_run, MIXTURE_OR_TASK_NAME=name)
