"""End-to-end runs of t5pt.train and t5pt.infer in subprocesses: a 2x4 mesh of 8 devices
against one device (each side's commands in one process), SIGTERM and SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from t5pt.checkpoints import opening
from tests.conftest import REPO, run_in_one_process

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


# Tuning methods whose parameters a 2x4 mesh shards its own way, as command-line flags.
METHODS = {
  'prompt': [],
  'prompt+lora': ['--gin_file=gin/methods/prompt_lora.gin'],
  'int8+prefix+ia3': [
    '--gin_file=gin/methods/deep_prompt.gin',
    '--gin_file=gin/methods/ia3.gin',
    '--gin.PREFIX_LENGTH=4',
    "--gin.TRAINABLE=['.*/prefix_(key|value)', '.*/ia3_scale']",
    '--gin.INT8_BASE=True',
  ],
}
EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
VALIDATION = 'synthetic_heldout_max-validation.jsonl'


@pytest.fixture(scope='module')
def meshes(base_checkpoint, prompt_run, tmp_path_factory):
  """What the mesh tests compare: every method trained, and the prompt run decoded by beam
  search, on one CPU device and on a 2x4 mesh of 8 simulated ones; each side's commands in
  one process (run_in_one_process). `results[mesh, name]`: a command's exit status and
  output; its files are under `directory / mesh / name`."""
  directory = tmp_path_factory.mktemp('meshes')
  results = {}
  for mesh, extra, env in (('one', [], None), ('eight', ['--gin.NUM_PARTITIONS=4'], EIGHT_DEVICES)):
    commands = {
      method: (
        't5pt.train',
        _args(
          directory / mesh / method,
          base_checkpoint,
          *method_flags,
          '--gin.TRAIN_STEPS=4',
          '--gin.BATCH_SIZE=8',
          '--gin.LOG_PERIOD=1',
          '--gin.DROPOUT_RATE=0.0',
          '--gin.INFER_EVAL=False',  # Decoding on a mesh: the beam search test.
          *extra,
        ),
      )
      for method, method_flags in METHODS.items()
    }
    commands['beam'] = (
      't5pt.infer',
      [
        f"--gin.CHECKPOINT_PATH='{prompt_run}'",
        '--gin.BATCH_SIZE=8',
        "--gin_bindings=inference.DecodeConfig.method = 'beam'",
        '--gin_bindings=inference.DecodeConfig.num_decodes = 2',
        f"--gin.INFER_OUTPUT_DIR='{directory / mesh / 'beam'}'",
        *extra,
      ],
    )
    outcomes = run_in_one_process(list(commands.values()), env=env)
    results.update({(mesh, name): outcome for name, outcome in zip(commands, outcomes)})
  return directory, results


@pytest.mark.parametrize('method', METHODS)
def test_2x4_mesh_on_8_devices_matches_one_device(meshes, method):
  directory, results = meshes
  single, sharded = results['one', method], results['eight', method]
  assert single.returncode == 0, single.stderr[-3000:]
  assert 'data=1 x model=1 over 1 cpu' in single.stdout
  assert sharded.returncode == 0, sharded.stderr[-3000:]
  assert 'data=2 x model=4 over 8 cpu' in sharded.stdout
  one, eight = (
    _train_losses(directory / 'one' / method),
    _train_losses(directory / 'eight' / method),
  )
  assert sorted(one) == [1, 2, 3, 4]
  for step in one:
    np.testing.assert_allclose(eight[step], one[step], rtol=1e-5)
  # Sharded reductions sum in another order; Adafactor's normalised lr-0.3 updates carry
  # those float32 rounding differences into the prompt at the 1e-5 level.
  trained_one = opening.open_base(str(directory / 'one' / method / 'checkpoint_4')).read_all()
  trained_eight = opening.open_base(str(directory / 'eight' / method / 'checkpoint_4')).read_all()
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
    '--gin.BATCH_SIZE=8',
    '--gin.CHECKPOINT_PERIOD=20',
    '--gin.EVAL_PERIOD=1000',
    '--gin.DROPOUT_RATE=0.1',
    '--gin.LOG_PERIOD=20',
    '--gin.INFER_EVAL=False',
  ]
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

  # The rerun, then (in the same process, run_in_one_process) the run never interrupted.
  resumed, straight = run_in_one_process(
    [
      ('t5pt.train', _args(stopped_dir, base_checkpoint, *common)),
      ('t5pt.train', _args(tmp_path / 'straight', base_checkpoint, *common)),
    ]
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert 'Resuming' in resumed.stdout
  np.testing.assert_array_equal(_prompt(stopped_dir, 120), _prompt(tmp_path / 'straight', 120))
  with open(stopped_dir / 'metrics.jsonl') as f:
    logged = [(l['split'], l['step']) for l in map(json.loads, f)]
  assert len(logged) == len(set(logged)), 'a step was logged twice'


def test_beam_search_inference_on_a_2x4_mesh_matches_one_device(meshes):
  directory, results = meshes
  for mesh in ('one', 'eight'):
    assert results[mesh, 'beam'].returncode == 0, results[mesh, 'beam'].stderr[-3000:]
  lines = {}
  for mesh in ('one', 'eight'):
    with open(directory / mesh / 'beam' / VALIDATION) as f:
      lines[mesh] = [json.loads(l) for l in f]
  assert len(lines['one']) == 512
  assert [l['predictions'] for l in lines['one']] == [l['predictions'] for l in lines['eight']]
  np.testing.assert_allclose(
    [l['scores'] for l in lines['one']], [l['scores'] for l in lines['eight']], atol=1e-4
  )
