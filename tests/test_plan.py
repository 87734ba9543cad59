"""The memory planner: it reads every Flan-T5 gin file, its CPU plan matches a measured
step, and its command line answers bad values with one message."""

import glob
import json
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import gin
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.training import planner as plan
from tests.conftest import REPO, run_module

# Public parameter counts of T5 1.1 / Flan-T5 (untied logits).
PARAMETERS = {
  'small': 76_961_152,
  'base': 247_577_856,
  'large': 783_150_080,
  'xl': 2_849_757_184,
  'xxl': 11_135_332_352,
}
FLAN_GIN_FILES = sorted(
  glob.glob(os.path.join(REPO, 'gin', 'flan_t5_*_prompt.gin'))
  + glob.glob(os.path.join(REPO, 'gin', 'flan_t5_*_lora.gin'))
)


def _planner(gin_file: str, bindings=(), mesh='1x1') -> plan.Planner:
  gin.clear_config()
  gin_utils.parse([gin_file], list(bindings))
  data, model = (int(n) for n in mesh.split('x'))
  return plan.Planner(plan._train_bindings(), plan.make_mesh(data * model, mesh, 1))


@pytest.mark.parametrize('gin_file', FLAN_GIN_FILES, ids=os.path.basename)
def test_every_flan_gin_file_plans_its_parameters(gin_file):
  size = os.path.basename(gin_file).split('_')[2]
  planner = _planner(gin_file)
  held = planner.held_bytes(plan.Setting(32, 1, 'none'))
  itemsize = jnp.dtype(planner.frozen_dtype).itemsize
  assert held['frozen'] == PARAMETERS[size] * itemsize
  cfg = planner.network_config
  trainable = cfg.prompt_length * cfg.emb_dim  # The prompt, PROMPT_LENGTH x embed.
  if cfg.lora_rules:  # Rank 8 on q and v of 3 attentions per decoder layer, 1 per encoder layer.
    attentions = cfg.num_encoder_layers + 2 * cfg.num_decoder_layers
    trainable += attentions * 2 * 8 * (cfg.emb_dim + cfg.num_heads * cfg.head_dim)
  assert held['trainable'] == trainable * 4 > 0  # float32
  assert held['optimizer'] > 0
  gin.clear_config()


MEASURE = """
import json, sys
import gin
from t5pt.runtime import gin_utils
from t5pt.training import planner as plan
gin_utils.parse(['gin/t5_1_1_tiny_prompt.gin'], ['BATCH_SIZE = 512', 'DROPOUT_RATE = 0.1'])
planner = plan.Planner(plan._train_bindings(), plan.make_mesh(1, None, 1))
setting = plan.Setting(512, 1, 'none')
print(json.dumps({'planned': planner.plan(setting).cpu_total, 'measured': planner.measure(setting)}))
"""


def test_cpu_plan_is_within_15_percent_of_a_measured_step():
  """XLA:CPU's plan against the resident memory a real step (random stand-in values)
  takes in a fresh process."""
  import subprocess

  env = {**os.environ, 'PYTHONPATH': REPO, **plan.measurable_cpu_environment()}
  result = subprocess.run(
    [sys.executable, '-c', MEASURE], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  numbers = json.loads(result.stdout.strip().splitlines()[-1])
  assert numbers['planned'] > 300e6  # Big enough for page-level noise not to matter.
  assert numbers['measured'] == pytest.approx(numbers['planned'], rel=0.15)


def test_remat_lowers_the_accelerator_estimate_but_not_the_cpu_figure():
  planner = _planner(os.path.join(REPO, 'gin', 't5_1_1_tiny_prompt.gin'), ['BATCH_SIZE = 64'])
  plain = planner.plan(plan.Setting(64, 1, 'none'))
  full = planner.plan(plan.Setting(64, 1, 'full'))
  assert full.cpu_activations == plain.cpu_activations  # XLA:CPU drops remat.
  assert full.activations < 0.8 * plain.activations
  split = planner.plan(plan.Setting(64, 4, 'none'))
  assert split.cpu_activations < 0.5 * plain.cpu_activations
  gin.clear_config()


def test_budget_search_finds_what_fits():
  planner = _planner(os.path.join(REPO, 'gin', 't5_1_1_tiny_prompt.gin'), ['BATCH_SIZE = 64'])
  start = plan.Setting(64, 1, 'none')
  whole = planner.plan(start)
  lightest, largest = plan.search(planner, start, budget=0.6 * whole.total)
  assert lightest is not None and lightest.total <= 0.6 * whole.total
  assert lightest.setting != start
  assert largest is None or largest.setting.batch_size < 64
  lightest, largest = plan.search(planner, start, budget=1.9 * whole.total)
  assert lightest.setting == start
  assert largest.setting.batch_size >= 64
  gin.clear_config()


@pytest.mark.parametrize(
  'mesh, devices, fragment',
  [('3x1', 2, "--mesh='3x1'"), ('2by1', 2, 'DATAxMODEL'), (None, 3, 'NUM_PARTITIONS=2')],
)
def test_bad_meshes_are_named(mesh, devices, fragment):
  with pytest.raises(UserError, match=fragment.replace('=', '.')):
    plan.parse_mesh(mesh, devices, 2 if mesh is None else 1)


def _fake_mesh(data: int, model: int):
  return types.SimpleNamespace(
    shape={'data': data, 'model': model}, devices=np.zeros((data, model))
  )


@pytest.mark.parametrize(
  'batch, microbatches, mesh, fragments',
  [
    (32, 1, (3, 1), ['BATCH_SIZE=32', '--mesh=3x1', '--mesh=1x3', 'BATCH_SIZE=33']),
    (32, 32, (2, 1), ['microbatch size', '(32 / 32)', '--mesh=1x2', 'BATCH_SIZE=64']),
    (8, 3, (2, 1), ['NUM_MICROBATCHES (trainer.train.num_microbatches) = 3']),
    (0, 1, (1, 1), ['BATCH_SIZE (trainer.train.batch_size) = 0']),
  ],
)
def test_batch_that_does_not_split_over_the_mesh_is_named(batch, microbatches, mesh, fragments):
  """The planner applies train's checks (checks.batch_on_mesh) and names the meshes that
  would plan."""
  with pytest.raises(UserError) as error:
    plan.check_batch_on_mesh(batch, microbatches, _fake_mesh(*mesh))
  for fragment in fragments:
    assert fragment in str(error.value)
  plan.check_batch_on_mesh(24, 2, _fake_mesh(3, 2))  # 12 rows per microbatch over 3 shards


@pytest.mark.slow
def test_command_line_batch_on_a_mesh_it_does_not_split_over():
  result = run_module(
    't5pt.plan',
    '--gin_file=gin/t5_1_1_tiny_prompt.gin',
    '--devices=3',
    '--mesh=3x1',
    env={'JAX_PLATFORMS': 'cpu'},
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and 'IndivisibleError' not in result.stderr
  assert 'BATCH_SIZE=32 must be a positive multiple' in result.stderr
  assert '--mesh=1x3' in result.stderr


def _gigabytes(output: str, label: str) -> float:
  line = next(line for line in output.splitlines() if line.strip().startswith(label))
  return float(line.split(label)[1].split()[0])


@pytest.mark.slow
def test_command_line_plans_shards_and_searches():
  # The tiny model (the search compiles a step per setting it tries), with a T5 vocabulary
  # so that the sharded embeddings show in the GB figures.
  common = (
    '--gin_file=gin/t5_1_1_tiny_prompt.gin',
    '--gin.BATCH_SIZE=8',
    '--gin.network.T5Config.vocab_size=32128',
    '--devices=2',
  )
  env = {'JAX_PLATFORMS': 'cpu'}
  data = run_module('t5pt.plan', *common, '--budget_gb=0.1', env=env)
  assert data.returncode == 0, data.stderr[-3000:]
  assert 'mesh data=2 x model=1' in data.stdout
  assert 'Within 0.1 GB per device:' in data.stdout
  assert 'largest batch: ' in data.stdout
  model = run_module('t5pt.plan', *common, '--mesh=1x2', env=env)
  assert model.returncode == 0, model.stderr[-3000:]
  assert 'mesh data=1 x model=2' in model.stdout
  replicated = _gigabytes(data.stdout, 'frozen parameters')
  assert _gigabytes(model.stdout, 'frozen parameters') < 0.55 * replicated
  bad = run_module('t5pt.plan', '--gin_file=gin/flan_t5_small_lora.gin', '--devices=0')
  assert bad.returncode == 2 and '--devices' in bad.stderr and 'Traceback' not in bad.stderr
