"""Parallel adapters (He et al. 2022), the method added as one module
(t5pt/model/methods/parallel_adapter.py) plus gin/methods/parallel_adapter.gin: the
parameters it adds, step 0 equal to the base, training on the demo task, and a clear
refusal from export."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5pt.checkpoints import exporting
from t5pt.checkpoints import opening
from t5pt.model import methods
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from tests.conftest import TINY
from tests.conftest import run_module
from tests.conftest import train_in_process
from tests.test_training import _batch

ADAPTER = {'parallel_adapter': {'bottleneck_dim': 4, 'scale': 4.0}}


def _params(config):
  model = models.EncoderDecoderModel(config)
  return model, partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(0), 6, 4)))


def _logits(model, flat, batch):
  return np.asarray(model.logits(partitioning.unflatten(flat), batch))


def test_adds_a_bottleneck_beside_each_chosen_sublayer_and_starts_as_the_base():
  sublayers = ('mlp', 'self_attention')
  settings = {'parallel_adapter': {'bottleneck_dim': 4, 'sublayers': sublayers}}
  config = network.T5Config(**TINY, methods=settings).check()
  model, flat = _params(config)
  added = {k: v.shape for k, v in flat.items() if methods.is_added(k)}
  expected = {
    f'{side}/layers_{i}/{sublayer}_parallel_adapter/{leaf}': shape
    for side, names in (('encoder', ('mlp',)), ('decoder', sublayers))
    for i in (0, 1)
    for sublayer in names
    for leaf, shape in (('down', (16, 4)), ('up', (4, 16)))
  }
  assert added == expected
  assert config.tuned_parameters() == (r'.*_parallel_adapter/(down|up)',)

  base_model = models.EncoderDecoderModel(network.T5Config(**TINY))
  batch = _batch(np.random.default_rng(0))
  base_only = {k: v for k, v in flat.items() if not methods.is_added(k)}
  np.testing.assert_allclose(_logits(model, flat, batch), _logits(base_model, base_only, batch))
  trained = {k: (v + 0.5 if k.endswith('/up') else v) for k, v in flat.items()}
  assert np.abs(_logits(model, trained, batch) - _logits(model, flat, batch)).max() > 1e-3


@pytest.mark.parametrize(
  'settings, message',
  [
    ({'bottleneck_dim': 0}, r"methods\['parallel_adapter'\]\['bottleneck_dim'\] = 0"),
    ({'scale': -1.0}, r"\['scale'\] = -1.0: must be a finite number greater than 0"),
    ({'sublayers': ('ffn',)}, r"\['sublayers'\] = 'ffn'"),
    ({'bottleneck': 8}, r"unknown setting\(s\) \['bottleneck'\]"),
  ],
)
def test_bad_settings_name_the_binding(settings, message):
  with pytest.raises(UserError, match=message):
    network.T5Config(**TINY, methods={'parallel_adapter': settings}).check()


def test_an_unknown_method_is_named():
  with pytest.raises(UserError, match=r"names \['houlsby'\], which t5pt does not know"):
    network.T5Config(**TINY, methods={'houlsby': {}}).check()


def test_shapes_in_a_checkpoint_are_recognised_or_the_settings_asked_for():
  shapes = {'encoder/layers_0/mlp_parallel_adapter/down': (16, 4)}
  with pytest.raises(UserError, match=r"bind the settings the run used.*'bottleneck_dim': 4"):
    methods.recognise(network.T5Config(**TINY), shapes, 'CHECKPOINT_PATH', '/runs/x')
  with pytest.raises(UserError, match=r"\['bottleneck_dim'\] = 8 in gin, but /runs/x"):
    config = network.T5Config(**TINY, methods={'parallel_adapter': {'bottleneck_dim': 8}})
    methods.recognise(config, shapes, 'CHECKPOINT_PATH', '/runs/x')
  config = network.T5Config(**TINY, methods=ADAPTER)
  assert methods.recognise(config, shapes, 'CHECKPOINT_PATH', '/runs/x') == config


@pytest.mark.slow
def test_trains_on_the_demo_task_and_export_refuses_it(base_checkpoint, tmp_path):
  gin_file = tmp_path / 'adapter.gin'
  gin_file.write_text(
    "include 'gin/t5_1_1_tiny_prompt.gin'\ninclude 'gin/methods/parallel_adapter.gin'\n"
  )
  model_dir = str(tmp_path / 'run')
  train_in_process(
    str(gin_file),
    model_dir,
    bindings=["network.T5Config.methods = {'parallel_adapter': {'bottleneck_dim': 8}}"],
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=40,
    CHECKPOINT_PERIOD=40,
    EVAL_PERIOD=1000,
    LEARNING_RATE=1e-2,
  )
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    losses = [line['loss'] for line in map(json.loads, f) if line['split'] == 'train']
  assert losses[-1] < 0.8 * losses[0], losses

  run = opening.open_run(model_dir)
  assert run.params and all(
    k.endswith(('_parallel_adapter/down', '_parallel_adapter/up')) for k in run.params
  )
  assert run.network_config().method_settings('parallel_adapter') == {'bottleneck_dim': 8}
  with pytest.raises(UserError, match='trained parallel adapters .* use the run with t5pt'):
    exporting.peft_type(run)
  result = run_module('t5pt.export', f'--model_dir={model_dir}', f'--hf_dir={tmp_path}/hf')
  assert result.returncode == 2 and 'a transformers T5 has no place for' in result.stderr
  assert not (tmp_path / 'hf').exists()
