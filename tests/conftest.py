"""Shared fixtures: tiny in-process training runs and a subprocess runner.

The suite runs on pytest-xdist workers (pyproject.toml), one test file per worker at a
time. Every process of one test run, workers and the entry points they start, shares one
persistent JAX compilation cache, and the session's trained base and prompt are made once
for all workers."""

import os
import shutil
import subprocess
import sys
import tempfile

import filelock
import gin
import pytest

pytest_plugins = ['tests.gcs_emulator']  # the `gcs_bucket` / `gcs_dir` fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEROP = os.path.join(os.path.dirname(REPO), 'shared', 'interop')

# A complete, tiny network.T5Config (T5 1.1 style) for unit tests.
TINY = dict(
  vocab_size=32,
  emb_dim=16,
  num_heads=2,
  head_dim=8,
  mlp_dim=24,
  num_encoder_layers=2,
  num_decoder_layers=2,
  dropout_rate=0.0,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=16,
  mlp_activations=('gelu', 'linear'),
  logits_via_embedding=False,
)


def train_in_process(gin_file: str, model_dir: str, bindings=(), **macros) -> dict:
  """Runs trainer.train under `gin_file` with MODEL_DIR, macro overrides and raw
  gin `bindings`. Decoded evaluation (INFER_EVAL) is off unless a test turns it on, and
  the data report samples fewer examples (tests/test_data_report.py checks it)."""
  from t5pt.training import data_report  # pylint: disable=import-outside-toplevel
  from t5pt.runtime import gin_utils
  from t5pt.training import trainer

  data_report.SAMPLE_EXAMPLES = 64
  macros.setdefault('INFER_EVAL', False)
  gin.clear_config()
  bindings = (
    [f'MODEL_DIR = {model_dir!r}'] + [f'{k} = {v!r}' for k, v in macros.items()] + list(bindings)
  )
  gin_utils.parse([gin_file], bindings)
  try:
    return trainer.train(progress_bar=False)
  finally:
    gin.clear_config()


def run_module(
  module: str, *args: str, env: dict | None = None, timeout: int = 600, cwd: str = REPO
) -> subprocess.CompletedProcess:
  """Runs `python -m module args` (from the repo root unless `cwd` is given) and returns
  the finished process."""
  full_env = {**os.environ, 'PYTHONPATH': REPO, **(env or {})}
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=cwd,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def pytest_configure(config):
  """The controller (or a run without workers) makes the run's compilation cache; the
  workers and every subprocess inherit it through the environment."""
  if not hasattr(config, 'workerinput') and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    config.t5pt_jax_cache = tempfile.mkdtemp(prefix='t5pt-tests-jax-cache-')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = config.t5pt_jax_cache
    # Programs compiled in under 0.3 s cost more to look up than to compile again.
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.3'


def pytest_unconfigure(config):
  if getattr(config, 't5pt_jax_cache', None):
    shutil.rmtree(config.t5pt_jax_cache, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Files with the most end-to-end (slow) tests first, so that no worker starts a long
  file while the others run out of work."""
  slow = {}
  for item in items:
    slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker('slow') is not None)
  items.sort(key=lambda item: -slow[item.path])  # stable: file order otherwise kept


def _made_once(tmp_path_factory, name: str, make) -> str:
  """The directory `name`, filled by `make(directory)` once per test run: the first
  worker to ask makes it while the others wait on a lock."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # shared by the run's workers
  directory = root / name
  with filelock.FileLock(str(directory) + '.lock'):
    done = directory / '.made'
    if not done.exists():
      shutil.rmtree(directory, ignore_errors=True)  # a worker failed half-way before
      directory.mkdir()
      make(str(directory))
      done.touch()
  return str(directory)


@pytest.fixture(scope='session')
def base_checkpoint(tmp_path_factory) -> str:
  """A briefly trained tiny base model (every parameter trainable, no prompt)."""
  return _made_once(
    tmp_path_factory,
    'base',
    lambda model_dir: train_in_process(
      'gin/demo/base_tiny.gin', model_dir, TRAIN_STEPS=60, CHECKPOINT_PERIOD=60, EVAL_PERIOD=1000
    ),
  )


@pytest.fixture(scope='session')
def prompt_run(base_checkpoint, tmp_path_factory) -> str:
  """A prompt briefly trained on `base_checkpoint` for the held-out synthetic task."""
  return _made_once(
    tmp_path_factory,
    'prompt_run',
    lambda model_dir: train_in_process(
      'gin/t5_1_1_tiny_prompt.gin',
      model_dir,
      INITIAL_CHECKPOINT_PATH=base_checkpoint,
      TRAIN_STEPS=10,
      CHECKPOINT_PERIOD=10,
      EVAL_PERIOD=1000,
      BATCH_SIZE=16,
    ),
  )
