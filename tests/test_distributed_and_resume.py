"""End-to-end runs of `python -m t5pt.train` in subprocesses: 8-device mesh, SIGTERM and
SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from t5pt.checkpoints import opening
from tests.conftest import REPO, run_module

pytestmark = pytest.mark.slow

PROMPT_GIN = '--gin_file=gin/t5_1_1_tiny_prompt.gin'


def _args(model_dir, base, *extra):
  return [
    PROMPT_GIN,
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
    *extra,
  ]


def _prompt(model_dir, step):
  return opening.open_base(os.path.join(model_dir, f'checkpoint_{step}')).read_all()[
    'encoder/prompt/prompt'
  ]


def _train_losses(model_dir):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  return {l['step']: l['loss'] for l in lines if l['split'] == 'train'}


@pytest.mark.parametrize(
  'method',
  [
    [],
    ['--gin_file=gin/methods/prompt_lora.gin'],
    [
      '--gin_file=gin/methods/deep_prompt.gin',
      '--gin_file=gin/methods/ia3.gin',
      '--gin.PREFIX_LENGTH=4',
      "--gin.TRAINABLE=['.*/prefix_(key|value)', '.*/ia3_scale']",
      '--gin.INT8_BASE=True',
    ],
  ],
  ids=['prompt', 'prompt+lora', 'int8+prefix+ia3'],
)
def test_2x4_mesh_on_8_devices_matches_one_device(tmp_path, base_checkpoint, method):
  common = [
    *method,
    '--gin.TRAIN_STEPS=4',
    '--gin.BATCH_SIZE=8',
    '--gin.LOG_PERIOD=1',
    '--gin.DROPOUT_RATE=0.0',
    '--gin.INFER_EVAL=False',  # Decoding on a mesh has its own test below.
  ]
  single = run_module('t5pt.train', *_args(tmp_path / 'one', base_checkpoint, *common))
  assert single.returncode == 0, single.stderr[-3000:]
  assert 'data=1 x model=1 over 1 cpu' in single.stdout + single.stderr
  sharded = run_module(
    't5pt.train',
    *_args(tmp_path / 'eight', base_checkpoint, *common, '--gin.NUM_PARTITIONS=4'),
    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
  )
  assert sharded.returncode == 0, sharded.stderr[-3000:]
  assert 'data=2 x model=4 over 8 cpu' in sharded.stdout + sharded.stderr
  one, eight = _train_losses(tmp_path / 'one'), _train_losses(tmp_path / 'eight')
  assert sorted(one) == [1, 2, 3, 4]
  for step in one:
    np.testing.assert_allclose(eight[step], one[step], rtol=1e-5)
  # Sharded reductions sum in another order; Adafactor's normalised lr-0.3 updates carry
  # those float32 rounding differences into the prompt at the 1e-5 level.
  trained_one = opening.open_base(str(tmp_path / 'one' / 'checkpoint_4')).read_all()
  trained_eight = opening.open_base(str(tmp_path / 'eight' / 'checkpoint_4')).read_all()
  assert sorted(trained_one) == sorted(trained_eight)
  for name, value in trained_one.items():
    np.testing.assert_allclose(trained_eight[name], value, atol=1e-4, err_msg=name)


def _start(model_dir, base, common) -> subprocess.Popen:
  argv = [sys.executable, '-m', 't5pt.train', *_args(model_dir, base, *common)]
  env = {**os.environ, 'PYTHONPATH': REPO}
  return subprocess.Popen(
    argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
  )


def _wait_for(proc, path) -> None:
  deadline = time.time() + 300
  while not path.exists():
    assert proc.poll() is None, 'the run ended before it could be stopped'
    assert time.time() < deadline
    time.sleep(0.02)


def test_sigterm_then_sigkill_then_rerun_gives_the_uninterrupted_prompt(tmp_path, base_checkpoint):
  common = [
    '--gin.TRAIN_STEPS=120',
    '--gin.CHECKPOINT_PERIOD=20',
    '--gin.EVAL_PERIOD=1000',
    '--gin.DROPOUT_RATE=0.1',
    '--gin.LOG_PERIOD=20',
    '--gin.INFER_EVAL=False',
  ]
  straight = run_module('t5pt.train', *_args(tmp_path / 'straight', base_checkpoint, *common))
  assert straight.returncode == 0, straight.stderr[-3000:]

  # A preemption notice: the step in flight finishes, is saved, and the run exits 0.
  stopped_dir = tmp_path / 'stopped'
  proc = _start(stopped_dir, base_checkpoint, common)
  _wait_for(proc, stopped_dir / 'checkpoint_20')
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  (line,) = [l for l in out.splitlines() if l.startswith('Stopped by SIGTERM after step ')]
  step = int(line.split()[5].rstrip(':'))
  assert 20 <= step < 120 and (stopped_dir / f'checkpoint_{step}').is_dir()

  # Then SIGKILL, which saves nothing: the rerun goes back to the newest checkpoint.
  proc = _start(stopped_dir, base_checkpoint, common)
  _wait_for(proc, stopped_dir / 'checkpoint_60')
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not (stopped_dir / 'checkpoint_120').exists()

  resumed = run_module('t5pt.train', *_args(stopped_dir, base_checkpoint, *common))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming' in resumed.stdout + resumed.stderr
  np.testing.assert_array_equal(_prompt(stopped_dir, 120), _prompt(tmp_path / 'straight', 120))
  with open(stopped_dir / 'metrics.jsonl') as f:
    logged = [(l['split'], l['step']) for l in map(json.loads, f)]
  assert len(logged) == len(set(logged)), 'a step was logged twice'


def test_beam_search_inference_on_a_2x4_mesh_matches_one_device(tmp_path, prompt_run):
  common = [
    f"--gin.CHECKPOINT_PATH='{prompt_run}'",
    '--gin.BATCH_SIZE=8',
    "--gin_bindings=inference.DecodeConfig.method = 'beam'",
    '--gin_bindings=inference.DecodeConfig.num_decodes = 2',
  ]
  one = run_module('t5pt.infer', *common, f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'one'}'")
  assert one.returncode == 0, one.stderr[-3000:]
  eight = run_module(
    't5pt.infer',
    *common,
    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'eight'}'",
    '--gin.NUM_PARTITIONS=4',
    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
  )
  assert eight.returncode == 0, eight.stderr[-3000:]
  name = 'synthetic_heldout_max-validation.jsonl'
  lines = {}
  for mesh in ('one', 'eight'):
    with open(tmp_path / mesh / name) as f:
      lines[mesh] = [json.loads(l) for l in f]
  assert len(lines['one']) == 512
  assert [l['predictions'] for l in lines['one']] == [l['predictions'] for l in lines['eight']]
  np.testing.assert_allclose(
    [l['scores'] for l in lines['one']], [l['scores'] for l in lines['eight']], atol=1e-4
  )
