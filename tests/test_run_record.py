"""The typed run record (run_checkpoints.RunMeta): every reader and writer of a run shares it,
and runs written before it existed still open and resume."""

import shutil

import pytest

from t5pt.checkpoints import opening
from t5pt.checkpoints import run_checkpoints
from t5pt.model import network
from t5pt.runtime.errors import UserError
from tests.conftest import REPO, train_in_process

V0_RUN = f'{REPO}/tests/data/run_v0'


@pytest.fixture
def v0_run(tmp_path) -> str:
  model_dir = tmp_path / 'run_v0'
  shutil.copytree(V0_RUN, model_dir)
  return str(model_dir)


def test_a_run_written_before_the_record_still_opens(v0_run):
  run = opening.open_run(v0_run)
  assert run.step == 2
  assert run.meta.version == run_checkpoints.RUN_META_VERSION
  assert run.meta.trainable == (network.PROMPT_PATH,)
  assert run.meta.task_feature_lengths == {'inputs': 24, 'targets': 10}
  assert run.meta.mixture_or_task_module == 'tasks.synthetic'
  assert run.network_config().prompt_length == 4
  assert run.prompt.shape == (4, 128)


def test_a_run_written_before_the_record_resumes_and_is_rewritten_typed(v0_run):
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    v0_run,
    TRAIN_STEPS=4,
    PROMPT_LENGTH=4,
    BATCH_SIZE=4,
    CHECKPOINT_PERIOD=2,
    EVAL_PERIOD=1000,
  )
  assert summary['start_step'] == 2
  meta = run_checkpoints.read_meta(v0_run, 4)
  assert meta.batches_consumed == 4
  assert meta.network_config == opening.open_run(v0_run, 2).network_config()


def test_record_round_trips_through_json():
  meta = run_checkpoints.RunMeta(
    step=7,
    trainable=('a', 'b'),
    batches_consumed=7,
    network_config=network.T5Config(vocab_size=32, lora_rules=[('.*/query/kernel', 4, 8.0)]),
    initial_checkpoint_path='gs://bucket/base',
    task_feature_lengths={'inputs': 8},
  )
  assert run_checkpoints.RunMeta.from_json(meta.to_json(), 'test') == meta


def test_records_from_a_newer_t5pt_or_damaged_ones_are_refused():
  with pytest.raises(UserError, match='newer t5pt'):
    run_checkpoints.RunMeta.from_json({'step': 1, 'trainable': [], 'version': 99}, 'x')
  with pytest.raises(UserError, match=r"unknown run record field\(s\) \['bogus'\]"):
    run_checkpoints.RunMeta.from_json({'step': 1, 'trainable': [], 'bogus': 1}, 'x')
