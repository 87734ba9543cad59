"""Two processes on localhost as two hosts (jax.distributed over gloo, t5x's flags):
preempted together, resumed, and equal to one process with the same global batch; infer,
eval and an ensemble on two hosts equal to one process. The tests read one module
fixture's runs."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from t5pt.checkpoints import opening
from t5pt.runtime import logs
from tests.conftest import REPO, run_module
from tests.gcs_emulator import free_port

pytestmark = pytest.mark.slow

COMMON = [
  '--gin.BATCH_SIZE=8',
  '--gin.DROPOUT_RATE=0.0',  # the same masks for one and two processes are not promised
  '--gin.LOG_PERIOD=10',
  '--gin.EVAL_PERIOD=1000',
  '--gin.CHECKPOINT_PERIOD=10',
  '--gin.INFER_EVAL=False',
]


def _start_two(module: str, *args: str, env: dict | None = None) -> list[subprocess.Popen]:
  """Both processes of a 2-host run of `python -m module args`."""
  address = f'localhost:{free_port()}'
  env = {**os.environ, 'PYTHONPATH': REPO, **(env or {})}
  return [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        module,
        *args,
        '--multiprocess_gpu',
        f'--coordinator_address={address}',
        '--process_count=2',
        f'--process_index={index}',
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for index in (0, 1)
  ]


def _finish(procs) -> list[str]:
  """Each process's stdout and stderr, once all have exited 0."""
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
  return outputs


def _train_args(model_dir, base, steps):
  return [
    '--gin_file=gin/t5_1_1_tiny_prompt.gin',
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
    f'--gin.TRAIN_STEPS={steps}',
    *COMMON,
  ]


def _metrics(path) -> list[dict]:
  with open(path if path.suffix == '.jsonl' else path / 'metrics.jsonl') as f:
    return [json.loads(l) for l in f]


@pytest.fixture(scope='module')
def runs(base_checkpoint, tmp_path_factory) -> types.SimpleNamespace:
  """The runs every test here reads, made once (each start of a process costs seconds of
  imports): two hosts train, one of them gets SIGTERM, and a rerun on two hosts finishes
  the run; one process trains the same steps straight; then infer, eval and a prompt
  ensemble on two hosts and (infer) in one process. The two-host eval runs with
  T5PT_VERBOSE=1; every other run is quiet. `outputs` maps each two-host run to its
  processes' stdout and stderr."""
  tmp = tmp_path_factory.mktemp('multihost')
  two, one = tmp / 'two', tmp / 'one'
  outputs = {}
  procs = _start_two('t5pt.train', *_train_args(two, base_checkpoint, 400))
  deadline = time.time() + 300
  while not (two / 'checkpoint_10').is_dir():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.05)
  # The notice reaches one host; JAX's preemption sync point stops both at one step.
  procs[1].send_signal(signal.SIGTERM)
  outputs['preempted'] = _finish(procs)
  (line,) = [
    l
    for l in outputs['preempted'][0].splitlines()
    if l.startswith('Stopped by SIGTERM after step ')
  ]
  stopped = int(line.split()[5].rstrip(':'))

  # The rerun on two hosts finishes a shorter run; one process trains it straight.
  finish = stopped + 10
  outputs['resumed'] = _finish(_start_two('t5pt.train', *_train_args(two, base_checkpoint, finish)))
  single = run_module('t5pt.train', *_train_args(one, base_checkpoint, finish))
  assert single.returncode == 0, single.stderr[-3000:]

  args = [f"--gin.CHECKPOINT_PATH='{two}'", '--gin.BATCH_SIZE=8']
  outputs['infer'] = _finish(
    _start_two('t5pt.infer', *args, f"--gin.INFER_OUTPUT_DIR='{tmp / 'infer2'}'")
  )
  single = run_module('t5pt.infer', *args, f"--gin.INFER_OUTPUT_DIR='{tmp / 'infer1'}'")
  assert single.returncode == 0, single.stderr[-3000:]
  outputs['eval (verbose)'] = _finish(
    _start_two(
      't5pt.eval',
      *args,
      f"--gin.EVAL_OUTPUT_DIR='{tmp / 'eval2'}'",
      env={logs.VERBOSE_ENV: '1'},
    )
  )

  # A prompt ensemble of the two runs (one base).
  ensemble = [f"--gin.ENSEMBLE=['{one}', '{two}']", "--gin.ENSEMBLE_METHOD='score'", *args[1:]]
  outputs['ensemble'] = _finish(
    _start_two('t5pt.infer', *ensemble, f"--gin.INFER_OUTPUT_DIR='{tmp / 'ens2'}'")
  )
  single = run_module('t5pt.infer', *ensemble, f"--gin.INFER_OUTPUT_DIR='{tmp / 'ens1'}'")
  assert single.returncode == 0, single.stderr[-3000:]
  return types.SimpleNamespace(
    dir=tmp, two=two, one=one, stopped=stopped, finish=finish, outputs=outputs
  )


def test_gloo_connection_lines_stay_off_the_quiet_terminal(runs):
  """gloo prints '[Gloo] Rank 0 is connected to 1 peer ranks...' from C++ on stdout when
  the processes first meet (logs.NativeStdoutFilter); T5PT_VERBOSE=1 shows it."""
  for name, outputs in runs.outputs.items():
    for out in outputs:
      if name == 'eval (verbose)':
        assert '[Gloo] Rank' in out, out[-3000:]  # What the filter has to drop.
      else:
        assert '[Gloo]' not in out, f'{name}: {out[-3000:]}'
  assert 'mesh: data=2 x model=1' in runs.outputs['resumed'][0]  # Its own stdout still shows.


def test_stdout_filter_drops_whole_gloo_lines_only():
  f = logs.NativeStdoutFilter(logs.GLOO_LINE)
  assert f.filter(b'step 1\n[Gl') == b'step 1\n'  # A possible gloo line waits...
  assert f.filter(b'oo] Rank 0 is connected') == b''
  assert (
    f.filter(b' to 1 peer ranks.\nstep 2') == b'step 2'
  )  # ...and goes; a partial line does not wait.
  assert f.filter(b' [Gloo] in a line\n[Glow\n') == b' [Gloo] in a line\n[Glow\n'


def test_two_hosts_preempted_and_resumed_train_like_one(runs):
  two, one, stopped, finish = runs.two, runs.one, runs.stopped, runs.finish
  assert 10 <= stopped < 400 and (two / f'checkpoint_{stopped}').is_dir()
  assert 'Stopped by' not in runs.outputs['preempted'][1], 'process 1 prints nothing of its own'

  def prompt(run):
    flat = opening.open_base(str(run / f'checkpoint_{finish}')).read_all()
    return flat['encoder/prompt/prompt']

  lines = {run: _metrics(run) for run in (one, two)}
  steps = [(l['split'], l['step']) for l in lines[two]]
  assert len(steps) == len(set(steps)), 'no metrics line is written twice'
  assert ('train', stopped) in steps and ('train', finish) in steps
  losses = {
    run: {l['step']: l['loss'] for l in lines[run] if l['split'] == 'train'} for run in lines
  }
  for step, loss in losses[one].items():
    if step > stopped:  # the resumed run's first line averages fewer steps
      break
    np.testing.assert_allclose(losses[two][step], loss, rtol=1e-4, err_msg=f'step {step}')
  # The two hosts sum the batch in another order; over tens of Adafactor steps (normalised
  # updates at learning rate 0.3) those float32 roundings grow to 1e-4..3e-3 (seen: 3.3e-3
  # after 39 steps), where a wrong split of the batch moves values by 0.1 and more.
  np.testing.assert_allclose(prompt(two), prompt(one), atol=1e-2, err_msg=f'{finish} steps')


NAME = 'synthetic_heldout_max-validation.jsonl'


def test_infer_on_two_hosts_writes_what_one_process_writes_and_eval_scores_it(runs):
  decoded = (runs.dir / 'infer2' / NAME).read_text()
  assert decoded == (runs.dir / 'infer1' / NAME).read_text()
  predictions = [json.loads(l) for l in decoded.splitlines()]
  assert len(predictions) == 512
  (metrics,) = _metrics(runs.dir / 'eval2' / 'synthetic_heldout_max-metrics.jsonl')
  right = sum(p['prediction'] == p['targets'] for p in predictions)
  assert metrics['sequence_accuracy'] == pytest.approx(100 * right / 512)


def test_prompt_ensemble_on_two_hosts_writes_what_one_process_writes(runs):
  """Decoded and ranked on two hosts, the ensemble of the two runs (one base)."""
  hosts, alone = ([json.loads(l) for l in open(runs.dir / d / NAME)] for d in ('ens2', 'ens1'))
  assert len(hosts) == 512 and all(set(l['members']) == {'one', 'two'} for l in hosts)
  assert [l['prediction'] for l in hosts] == [l['prediction'] for l in alone]
  # Rows split over two hosts' devices run other matrix shapes: float32 roundings.
  scores = lambda lines: [[m['score'] for m in l['members'].values()] + [l['score']] for l in lines]
  np.testing.assert_allclose(scores(hosts), scores(alone), atol=1e-5)
