"""LoRA and IA3: step 0 is the base model, only adapter leaves train, merging is exact,
adapters shard with t5x-style rules, and bad rules are clear errors."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.model import methods
from t5pt.model.methods import ia3
from t5pt.model.methods import lora
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.training import optimizers
from tests.conftest import TINY
from tests.test_training import _batch, _train_steps

MLP_RULE = (r'.*/mlp/(wi_0|wo)/kernel', 4, 8.0)
ADAPTED = dict(
  TINY,
  lora_rules=lora.DEFAULT_LORA_RULES + (MLP_RULE,),
  ia3_pattern=ia3.DEFAULT_IA3_PATTERN,
)


def _params(config, seed=0):
  model = models.EncoderDecoderModel(config)
  return model, partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(seed), 6, 4)))


def _logits(model, flat, batch):
  return np.asarray(model.logits(partitioning.unflatten(flat), batch))


def _perturbed(flat, seed=1):
  """Adapter leaves moved away from their identity initialisation."""
  rng = np.random.default_rng(seed)
  return {
    k: (v + rng.normal(0, 0.3, v.shape).astype(np.float32) if methods.is_added(k) else v)
    for k, v in flat.items()
  }


def test_adapters_are_placed_where_the_rules_say():
  _, flat = _params(network.T5Config(**ADAPTED, prompt_length=3))
  lora = sorted(k for k in flat if k.endswith('/lora_a'))
  assert lora == sorted(
    [f'encoder/layers_{i}/attention/{m}/lora_a' for i in (0, 1) for m in ('query', 'value')]
    + [
      f'decoder/layers_{i}/{a}/{m}/lora_a'
      for i in (0, 1)
      for a in ('self_attention', 'encoder_decoder_attention')
      for m in ('query', 'value')
    ]
    + [
      f'{s}/layers_{i}/mlp/{m}/lora_a'
      for s in ('encoder', 'decoder')
      for i in (0, 1)
      for m in ('wi_0', 'wo')
    ]
  )
  assert flat['encoder/layers_0/attention/query/lora_a'].shape == (16, 8)
  assert flat['encoder/layers_0/mlp/wo/lora_b'].shape == (4, 16)
  np.testing.assert_array_equal(flat['encoder/layers_0/mlp/wo/lora_b'], 0)
  assert flat['decoder/layers_1/self_attention/key/ia3_scale'].shape == (16,)
  assert flat['decoder/layers_1/mlp/wo/ia3_scale'].shape == (24,)  # the hidden activation
  assert 'decoder/layers_1/self_attention/query/ia3_scale' not in flat


def test_step_zero_equals_the_base_model():
  batch = _batch(np.random.default_rng(0))
  base_model, base = _params(network.T5Config(**TINY, prompt_length=3))
  model, adapted = _params(network.T5Config(**ADAPTED, prompt_length=3))
  adapted.update(base)  # Same base weights; adapters at their initial values.
  np.testing.assert_array_equal(_logits(model, adapted, batch), _logits(base_model, base, batch))


def test_merged_adapters_give_the_adapted_outputs_and_decodes():
  batch = _batch(np.random.default_rng(0))
  config = network.T5Config(**ADAPTED)
  model, flat = _params(config)
  flat = _perturbed(flat)
  merged = methods.merge(flat, config)
  assert not any(methods.is_added(k) for k in merged)
  plain = models.EncoderDecoderModel(network.T5Config(**TINY))
  adapted_logits = _logits(model, flat, batch)
  np.testing.assert_allclose(_logits(plain, merged, batch), adapted_logits, atol=1e-4)
  assert np.abs(adapted_logits - _logits(*_params(network.T5Config(**TINY)), batch)).max() > 1e-2, (
    'the perturbed adapters should change the outputs'
  )
  inputs = jnp.asarray(batch['encoder_input_tokens'])
  with_adapters, _ = inference.predict_batch(model, partitioning.unflatten(flat), inputs, 6)
  after_merge, _ = inference.predict_batch(plain, partitioning.unflatten(merged), inputs, 6)
  np.testing.assert_array_equal(np.asarray(with_adapters), np.asarray(after_merge))


@pytest.mark.parametrize(
  'patterns', [[r'.*/lora_[ab]'], [r'.*/ia3_scale'], [network.PROMPT_PATH, r'.*/lora_[ab]']]
)
def test_only_the_selected_adapter_leaves_change(monkeypatch, patterns):
  from tests import test_training  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(
    test_training,
    'TINY',
    dict(
      test_training.TINY, **{k: v for k, v in ADAPTED.items() if k in ('lora_rules', 'ia3_pattern')}
    ),
  )
  before, after, trainable_paths, _ = _train_steps(
    patterns, optimizers.adamw(1e-2, warmup_steps=0, decay_steps=10)
  )
  assert trainable_paths and all(any(re.fullmatch(p, k) for p in patterns) for k in trainable_paths)
  for path, value in before.items():
    if path in trainable_paths:  # (A moves from step 2 on, once B is non-zero.)
      assert not np.allclose(after[path], value), path
    else:
      np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(value), path)


def test_adapters_shard_with_t5x_rules_and_a_replicated_rank_axis():
  config = network.T5Config(**ADAPTED)
  model = models.EncoderDecoderModel(config)
  boxed = jax.eval_shape(lambda r: model.init(r, 6, 4), jax.random.PRNGKey(0))
  specs = partitioning.flatten(nn.get_partition_spec(boxed))
  mesh_specs = partitioning.flatten(
    nn.logical_to_mesh(nn.get_partition_spec(boxed), partitioning.STANDARD_LOGICAL_AXIS_RULES)
  )
  assert tuple(specs['encoder/layers_0/attention/query/lora_a']) == ('embed', 'lora_rank')
  assert tuple(specs['encoder/layers_0/attention/query/lora_b']) == ('lora_rank', 'joined_kv')
  assert tuple(mesh_specs['encoder/layers_0/attention/query/lora_b']) == (None, 'model')
  assert tuple(mesh_specs['encoder/layers_0/mlp/wo/lora_a']) == ('model', None)
  assert tuple(mesh_specs['encoder/layers_0/mlp/wo/ia3_scale']) == ('model',)


def test_bad_adapter_rules_are_clear_errors():
  with pytest.raises(UserError, match=r"LORA_RULES rank of '.\*/query/kernel' = 0"):
    network.T5Config(**TINY, lora_rules=[('.*/query/kernel', 0, 16)]).check()
  with pytest.raises(UserError, match='not a valid regex'):
    methods.check_kernels(network.T5Config(**TINY, ia3_pattern='('), ['a/kernel'])
  with pytest.raises(UserError, match="'.*/qurey/kernel' matches no kernel"):
    methods.check_kernels(
      network.T5Config(**TINY, lora_rules=[('.*/qurey/kernel', 8, 16)]),
      ['encoder/layers_0/attention/query/kernel'],
    )


def test_lora_dropout_is_active_only_in_training():
  config = network.T5Config(**dict(ADAPTED, lora_dropout=0.5, dropout_rate=0.0))
  model, flat = _params(config)
  flat = _perturbed(flat)
  batch = _batch(np.random.default_rng(0))
  params = partitioning.unflatten(flat)
  eval_logits = model.logits(params, batch)
  np.testing.assert_array_equal(eval_logits, model.logits(params, batch))
  train_logits = model.logits(params, batch, dropout_rng=jax.random.PRNGKey(3))
  assert jnp.abs(train_logits - eval_logits).max() > 1e-3
