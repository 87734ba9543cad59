"""A run that goes wrong keeps what it had: NaN stops it before anything non-finite is
saved, a resume under other settings is refused, and a resumed infer keeps its checkpoint."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.checkpoints import opening
from t5pt.checkpoints import run_checkpoints
from t5pt.model import steps
from t5pt.runtime import errors
from t5pt.runtime.errors import UserError
from t5pt.serving import batch_inference
from t5pt.training import trainer
from tests.conftest import train_in_process
from tests.test_infer import infer_in_process

PROMPT_GIN = 'gin/t5_1_1_tiny_prompt.gin'
SHORT = dict(BATCH_SIZE=8, LOG_PERIOD=2, CHECKPOINT_PERIOD=2)


def _train(model_dir, **macros) -> dict:
  """A few steps of prompt tuning, without evaluation (nothing here looks at it)."""
  return train_in_process(PROMPT_GIN, str(model_dir), ['trainer.train.eval_split = None'], **macros)


def test_a_nan_stops_the_run_and_keeps_the_last_finite_checkpoint(
  base_checkpoint, tmp_path, monkeypatch
):
  build = steps.build_train_step

  def poisoned_from_step_3(model, tx, dropout_rng, num_microbatches):
    train_step = build(model, tx, dropout_rng, num_microbatches)

    def step_fn(params, opt_state, frozen, batch, step):
      params, opt_state, metrics = train_step(params, opt_state, frozen, batch, step)
      poison = jnp.where(step >= 2, jnp.nan, 1.0)  # The update of step 3 (index 2) on.
      return jax.tree.map(lambda p: p * poison, params), opt_state, metrics

    return step_fn

  monkeypatch.setattr(trainer.steps, 'build_train_step', poisoned_from_step_3)
  model_dir = tmp_path / 'run'
  with pytest.raises(errors.TrainingStopped, match=r'NaN or Inf by step 4 .*checkpoint_2, holds'):
    _train(str(model_dir), INITIAL_CHECKPOINT_PATH=base_checkpoint, TRAIN_STEPS=10, **SHORT)
  assert run_checkpoints.latest_step(str(model_dir)) == 2
  prompt = opening.open_base(str(model_dir)).read_all()['encoder/prompt/prompt']
  assert np.isfinite(prompt).all()
  lines = [json.loads(l) for l in (model_dir / 'metrics.jsonl').read_text().splitlines()]
  assert [l['loss'] is None for l in lines if l['split'] == 'train'] == [False, True]
  assert errors.TrainingStopped.exit_status == 1


def test_resuming_under_other_settings_is_refused_naming_both_values(base_checkpoint, tmp_path):
  model_dir = str(tmp_path / 'run')
  common = dict(INITIAL_CHECKPOINT_PATH=base_checkpoint, TRAIN_STEPS=2, **SHORT)
  _train(model_dir, **common)
  changed = dict(common, BATCH_SIZE=16, SEED=3, TRAIN_STEPS=4)
  with pytest.raises(UserError, match=r'BATCH_SIZE was 8, now 16; SEED was 0, now 3\. Resuming'):
    _train(model_dir, **changed)
  with pytest.raises(UserError, match=r"TASK_FEATURE_LENGTHS was \{'inputs': 24, 'targets': 10\}"):
    _train(model_dir, **dict(common, TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 10}))
  assert run_checkpoints.latest_step(model_dir) == 2
  # More steps under the same settings is what resuming is for.
  assert _train(model_dir, **dict(common, TRAIN_STEPS=4))['step'] == 4


def test_a_resumed_infer_keeps_the_checkpoint_it_began_with(prompt_run, tmp_path, monkeypatch):
  run = tmp_path / 'run'
  shutil.copytree(prompt_run, run)
  newest = run_checkpoints.latest_step(str(run))
  interrupted = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
  monkeypatch.setattr('t5pt.serving.infer_io.ChunkedOutput.write_chunk', interrupted)
  with pytest.raises(KeyboardInterrupt):
    infer_in_process(tmp_path / 'out', CHECKPOINT_PATH=str(run), BATCH_SIZE=16)
  monkeypatch.undo()
  # The run trains on meanwhile: a newer checkpoint appears.
  shutil.copytree(run / f'checkpoint_{newest}', run / f'checkpoint_{newest + 100}')
  assert run_checkpoints.latest_step(str(run)) == newest + 100
  loaded_steps = []
  load = opening.load

  def spy(*args, **kwargs):
    model = load(*args, **kwargs)
    loaded_steps.append(model.run.step)
    return model

  monkeypatch.setattr(batch_inference.opening, 'load', spy)
  infer_in_process(tmp_path / 'out', CHECKPOINT_PATH=str(run), BATCH_SIZE=16)
  infer_in_process(tmp_path / 'fresh', CHECKPOINT_PATH=str(run), BATCH_SIZE=16)
  assert loaded_steps == [newest, newest + 100]


def _flip_a_bit_in_the_largest_file(directory) -> None:
  """A flipped bit in the (compressed) array data orbax wrote under `directory`."""
  largest = max((p for p in directory.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  blob = bytearray(largest.read_bytes())
  blob[len(blob) // 2] ^= 0x10
  largest.write_bytes(bytes(blob))


def _record_a_wrong_checksum(step_dir) -> None:
  """What a flipped bit that still decodes looks like: the arrays no longer match the
  checksums recorded at save."""
  record_file = step_dir / 'meta' / 'metadata'
  record = json.loads(record_file.read_text())
  (name,) = [k for k in record['checksums'] if k.startswith("['params']")]
  record['checksums'][name] ^= 1
  record_file.write_text(json.dumps(record))


@pytest.mark.parametrize(
  'damage', ['flipped bit', 'wrong checksum', 'garbled record', 'deleted arrays']
)
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_it_resumes(
  base_checkpoint, tmp_path, capsys, damage
):
  model_dir = tmp_path / 'run'
  common = dict(INITIAL_CHECKPOINT_PATH=base_checkpoint, TRAIN_STEPS=4, **SHORT)
  _train(str(model_dir), **common)
  newest = model_dir / 'checkpoint_4'
  if damage == 'flipped bit':
    _flip_a_bit_in_the_largest_file(newest / 'params')
  elif damage == 'wrong checksum':
    _record_a_wrong_checksum(newest)
  elif damage == 'garbled record':
    (newest / 'meta' / 'metadata').write_text('{"step": 4, "trainable": [')
  else:
    shutil.rmtree(newest / 'params')
  with pytest.raises(run_checkpoints.DamagedCheckpoint, match=f'{newest} is damaged'):
    opening.open_run(str(model_dir))  # What infer, eval and export read.
  capsys.readouterr()

  summary = _train(str(model_dir), **dict(common, TRAIN_STEPS=6))
  captured = capsys.readouterr()
  assert f'{newest} is damaged' in captured.err, captured.err
  assert 'trying the checkpoint before it' in captured.err
  if damage == 'wrong checksum':
    assert 'differ from what was saved' in captured.err
  assert summary['start_step'] == 2 and summary['step'] == 6
  assert (model_dir / 'checkpoint_4.damaged').is_dir()
  assert 'Set aside the damaged checkpoint_4' in captured.out
  assert run_checkpoints.latest_step(str(model_dir)) == 6
