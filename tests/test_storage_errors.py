"""A full disk, a read-only MODEL_DIR and a MODEL_DIR that is a file: one clear message
each, and the checkpoints already written stay intact."""

import contextlib
import os
import subprocess

import pytest

from t5pt.checkpoints import run_checkpoints
from t5pt.runtime import errors
from t5pt.runtime.errors import UserError
from tests.conftest import train_in_process

PROMPT_GIN = 'gin/t5_1_1_tiny_prompt.gin'


@contextlib.contextmanager
def _tmpfs(directory, options: str):
  """A small file system mounted at `directory` (root in a container can mount one)."""
  os.makedirs(directory)
  mounted = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(directory)], capture_output=True
  )
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); run as root')
  try:
    yield directory
  finally:
    subprocess.run(['umount', '-l', str(directory)], check=True)


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, base_checkpoint):
  settings = dict(
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=200,
    CHECKPOINT_PERIOD=2,
    EVAL_PERIOD=1000,
    LOG_PERIOD=10,
  )
  keep_all = ['trainer.train.keep_checkpoints = None']
  with _tmpfs(tmp_path / 'disk', 'size=400k') as disk:
    model_dir = str(disk / 'run')
    with pytest.raises(errors.TrainingStopped) as stopped:
      train_in_process(PROMPT_GIN, model_dir, bindings=keep_all, **settings)
    message = str(stopped.value)
    assert 'No space left on device' in message and f'MODEL_DIR={model_dir}' in message
    newest = run_checkpoints.latest_step(model_dir)
    assert newest and f'checkpoint_{newest}, is intact' in message
    meta = run_checkpoints.read_meta(model_dir, newest)
    assert meta.step == newest and meta.checksums

    # Once there is room again, the same command resumes from that checkpoint.
    subprocess.run(['mount', '-o', 'remount,size=64m', str(disk)], check=True)
    summary = train_in_process(PROMPT_GIN, model_dir, **settings)
    assert summary['start_step'] == newest and summary['step'] == 200


def test_a_read_only_model_dir_is_refused_before_anything_is_written(tmp_path):
  if os.geteuid() == 0:
    context = _tmpfs(tmp_path / 'ro', 'ro,size=1m')
  else:
    (tmp_path / 'ro').mkdir(mode=0o555)
    context = contextlib.nullcontext(tmp_path / 'ro')
  with context as read_only:
    with pytest.raises(UserError, match='is read-only') as error:
      train_in_process(PROMPT_GIN, str(read_only / 'run'), TRAIN_STEPS=1)
    assert f"MODEL_DIR='{read_only / 'run'}' cannot be written" in str(error.value)


def test_a_model_dir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  with pytest.raises(UserError, match="MODEL_DIR='.*file' is a file, not a directory"):
    train_in_process(PROMPT_GIN, str(tmp_path / 'file'), TRAIN_STEPS=1)
  with pytest.raises(UserError, match='cannot be created: .*file is a file'):
    train_in_process(PROMPT_GIN, str(tmp_path / 'file' / 'run'), TRAIN_STEPS=1)
  assert (tmp_path / 'file').read_text() == 'not a directory'
