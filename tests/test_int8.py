"""The int8 frozen base: per-channel quantisation, outputs close to the float base, a
prompt trained on it, and the frozen tree at about a quarter of its float32 size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.checkpoints import opening
from t5pt.model import methods
from t5pt.model import models
from t5pt.model import network
from t5pt.model import quantization
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from tests.conftest import train_in_process
from tests.test_training import _batch

# Documented tolerance (docs/training.md): on the tiny base, int8 logits stay within 2% of the
# float logits' range and greedy decodes agree on nearly every example.
LOGIT_TOLERANCE = 0.02


def test_quantisation_error_is_at_most_half_a_step_per_column():
  kernel = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32)
  kernel[:, 3] = 0.0  # an all-zero column must not divide by zero
  quantized, scale = quantization.quantize(kernel)
  assert quantized.dtype == np.int8 and scale.shape == (48,)
  assert np.abs(quantized).max() == 127
  error = np.abs(quantization.dequantize(quantized, scale) - kernel)
  assert (error <= scale[None, :] / 2 + 1e-7).all()
  np.testing.assert_array_equal(quantization.dequantize(quantized, scale)[:, 3], 0.0)


def _logits(config, params, batch):
  return np.asarray(models.EncoderDecoderModel(config).logits(params, batch))


def test_int8_base_tracks_the_float_base(base_checkpoint):
  float_config, float_params = opening.load_model(base_checkpoint)
  int8_config, int8_params = opening.load_model(
    base_checkpoint, network.T5Config(int8_kernels=True), dtype='bfloat16'
  )
  flat = partitioning.flatten(int8_params)
  kernels = [k for k in flat if k.endswith('/kernel')]
  assert kernels and all(flat[k].dtype == jnp.int8 for k in kernels)
  assert all(flat[quantization.scale_path(k)].dtype == jnp.float32 for k in kernels)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  float_kernels = sum(partitioning.flatten(float_params)[k].nbytes for k in kernels)
  assert sum(flat[k].nbytes for k in kernels) == float_kernels // 4
  assert nbytes(int8_params) < 0.35 * nbytes(float_params)

  batch = _batch(np.random.default_rng(0), batch=16, in_len=12, tgt_len=6)
  batch['encoder_input_tokens'] = np.clip(batch['encoder_input_tokens'], 0, 200)
  reference = _logits(float_config, float_params, batch)
  quantized = _logits(int8_config, int8_params, batch)
  spread = reference.max() - reference.min()
  assert np.abs(quantized - reference).max() < LOGIT_TOLERANCE * spread
  agree = (quantized.argmax(-1) == reference.argmax(-1)).mean()
  assert agree > 0.95, agree
  # Dequantising gives back a float model with the int8 model's outputs.
  dequantized = methods.merge({k: np.asarray(v) for k, v in flat.items()}, int8_config)
  np.testing.assert_allclose(
    _logits(float_config, partitioning.unflatten(dequantized), batch), quantized, atol=0.05
  )


def test_prompt_trains_on_an_int8_base_and_the_run_reloads_int8(base_checkpoint, tmp_path):
  model_dir = str(tmp_path / 'int8_prompt')
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    model_dir,
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    INT8_BASE=True,
    FROZEN_DTYPE='bfloat16',
    TRAIN_STEPS=20,
    CHECKPOINT_PERIOD=20,
    EVAL_PERIOD=20,
  )
  assert summary['eval']['loss'] < summary['eval_at_start']['loss']
  loaded = opening.load(model_dir)
  assert loaded.config.int8_kernels
  flat = partitioning.flatten(loaded.params)
  assert flat['encoder/layers_0/attention/query/kernel'].dtype == jnp.int8
  np.testing.assert_array_equal(
    flat[network.PROMPT_PATH], summary['params']['encoder']['prompt']['prompt']
  )


def test_int8_needs_a_base_and_frozen_kernels(base_checkpoint, tmp_path):
  with pytest.raises(UserError, match='int8_kernels quantises a loaded base'):
    train_in_process('gin/t5_1_1_tiny_prompt.gin', str(tmp_path / 'a'), INT8_BASE=True)
  with pytest.raises(UserError, match='with int8_kernels the kernels are frozen int8'):
    train_in_process(
      'gin/t5_1_1_tiny_prompt.gin',
      str(tmp_path / 'b'),
      INT8_BASE=True,
      INITIAL_CHECKPOINT_PATH=base_checkpoint,
      TRAINABLE=['encoder/prompt/prompt', '.*/mlp/wo/kernel'],
    )
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
