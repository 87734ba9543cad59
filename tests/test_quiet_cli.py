"""At default verbosity an entry point prints t5pt's own lines only; T5PT_VERBOSE=1 (or
--verbosity) brings the libraries' logs back."""

import logging
import os
import re
import subprocess
import sys
import sysconfig

import pytest

from t5pt.runtime import logs
from tests.conftest import REPO

# Lines that TensorFlow, XLA, absl, seqio & co. print: absl's C++ and Python prefixes
# ('I0000 00:00:1796163542.047316', 'W1201 22:19:09.097239', not anchored: a native line
# can continue a progress bar's), Python logging's default format, Python warnings, and
# words only library messages contain.
LIBRARY_LINE = re.compile(
  r'[IWEF]\d{4} \d\d:\d\d:\d+\.\d{6}|^(DEBUG|INFO|WARNING|ERROR|CRITICAL):|'
  r'absl::InitializeLog|Logging before flag parsing|\w+Warning: |tensorflow|cuda|cuInit|'
  r'oneDNN|cuDNN|cuBLAS|cuFFT|seqio|FunctionDataset|logger_cls|may be insufficient|'
  r'longer than necessary|Max Lengths',
  re.IGNORECASE,
)


def _train(model_dir, output, env):
  """Starts a one-step prompt-tuning run, evaluated (teacher-forced and decoded, with the
  task's seqio metrics) before and after the step, on a one-layer network to keep
  compiling short."""
  args = [
    '--gin_file=gin/t5_1_1_tiny_prompt.gin',
    f"--gin.MODEL_DIR='{model_dir}'",
    '--gin.TRAIN_STEPS=1',
    '--gin.EVAL_PERIOD=1',
    '--gin.BATCH_SIZE=2',
    '--gin_bindings=network.T5Config.num_encoder_layers = 1',
    '--gin_bindings=network.T5Config.num_decoder_layers = 1',
  ]
  full_env = {
    k: v for k, v in os.environ.items() if k not in ('T5PT_VERBOSE', 'TF_CPP_MIN_LOG_LEVEL')
  }
  full_env.update(PYTHONPATH=REPO, PYTHONUNBUFFERED='1', **env)
  return subprocess.Popen(
    [sys.executable, '-m', 't5pt.train', *args],
    cwd=REPO,
    env=full_env,
    stdout=output,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _library_lines(output: str) -> list[str]:
  return [line for line in re.split(r'[\r\n]', output) if LIBRARY_LINE.search(line)]


@pytest.mark.slow
def test_train_prints_only_t5pt_lines_unless_verbose(tmp_path):
  with open(tmp_path / 'quiet.log', 'w+') as quiet_log:
    # As started by a parent process that imported jax, which sets TF_CPP_MIN_LOG_LEVEL=1.
    quiet = _train(tmp_path / 'quiet', quiet_log, {'TF_CPP_MIN_LOG_LEVEL': '1'})
    # Meanwhile the same run with T5PT_VERBOSE=1, stopped at its first library line
    # (TensorFlow's as it loads, or seqio's about training on an uncached task).
    verbose = _train(tmp_path / 'verbose', subprocess.PIPE, {'T5PT_VERBOSE': '1'})
    verbose_out = []
    try:
      for line in verbose.stdout:
        verbose_out.append(line)
        if LIBRARY_LINE.search(line):
          break
    finally:
      verbose.kill()
      verbose.communicate()
    quiet.wait(timeout=600)
    quiet_log.seek(0)
    quiet_out = quiet_log.read()
  assert _library_lines(''.join(verbose_out)), ''.join(verbose_out)
  assert quiet.returncode == 0, quiet_out[-3000:]
  assert _library_lines(quiet_out) == [], quiet_out
  assert re.search(r'^decoded eval @ step 1: ', quiet_out, re.MULTILINE), quiet_out
  assert re.search(r'^t5pt: warning: No INITIAL_CHECKPOINT_PATH', quiet_out, re.MULTILINE)


@pytest.mark.parametrize(
  'argv,env,expected',
  [
    ([], {}, False),
    (['--gin.TRAIN_STEPS=3'], {'T5PT_VERBOSE': '0'}, False),
    ([], {'T5PT_VERBOSE': '1'}, True),
    (['--verbosity=0'], {}, True),
    (['-v', '1'], {}, True),
    (['--', '--verbosity=0'], {}, False),
  ],
)
def test_verbose_from_flag_or_environment(monkeypatch, argv, env, expected):
  monkeypatch.delenv('T5PT_VERBOSE', raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert logs.verbose(argv) is expected


def _record(path, level=logging.WARNING, msg='careful'):
  return logging.LogRecord('absl', level, path, 1, msg, None, None)


def test_filter_keeps_t5pt_records_and_library_errors_only():
  library = os.path.join(os.path.dirname(logging.__file__), 'x.py')
  seqio_file = os.path.join(sysconfig.get_paths()['purelib'], 'seqio', 'x.py')
  own = os.path.join(REPO, 't5pt', 'trainer.py')
  keep = logs.OwnRecordsOnly().filter
  assert keep(_record(own)) and keep(_record(os.path.join(REPO, 'tasks', 'files.py')))
  assert not keep(_record(library)) and not keep(_record(seqio_file))
  assert keep(_record(seqio_file, logging.ERROR))
  formatter = logs.ShortOwnFormatter(logging.Formatter('%(levelname)s %(message)s'))
  assert formatter.format(_record(own)) == 't5pt: warning: careful'
  assert formatter.format(_record(seqio_file, logging.ERROR)) == 'ERROR careful'


def test_warnings_filter_matches_library_modules_only():
  pattern = re.compile(logs._NOT_OWN_MODULE)  # pylint: disable=protected-access
  assert pattern.match('seqio.dataset_providers') and pattern.match('jax._src.xla_bridge')
  assert not pattern.match('t5pt.training.trainer') and not pattern.match('tasks')
  assert not pattern.match('__main__') and pattern.match('t5pt_other')
