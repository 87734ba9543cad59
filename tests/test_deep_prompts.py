"""Deep prompts (prefix tuning / P-tuning v2): per-layer key/value prefixes that every
query sees without position bias, in training and in cached decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.model import layers
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime import partitioning
from t5pt.serving import inference
from t5pt.training import optimizers
from tests.conftest import TINY
from tests.test_training import _batch, _train_steps

PREFIXES = dict(prefix_length=3, decoder_prefix_length=2)


def test_prefixes_are_per_layer_keys_and_values():
  model = models.EncoderDecoderModel(network.T5Config(**TINY, **PREFIXES))
  flat = partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(0), 6, 4)))
  prefixes = {k: v.shape for k, v in flat.items() if '/prefix_' in k}
  assert prefixes == {
    **{
      f'encoder/layers_{i}/attention/prefix_{kv}': (3, 16)
      for i in (0, 1)
      for kv in ('key', 'value')
    },
    **{
      f'decoder/layers_{i}/{a}/prefix_{kv}': (2, 16)
      for i in (0, 1)
      for a in ('self_attention', 'encoder_decoder_attention')
      for kv in ('key', 'value')
    },
  }


def test_attention_with_a_prefix_matches_the_formula():
  """softmax(q [pk; k]^T + [0; bias], masked) [pv; v], by hand."""
  heads, head_dim, prefix, length = 2, 4, 3, 5
  config = network.T5Config(prefix_length=prefix)
  attention = layers.MultiHeadAttention(heads, head_dim, 0.0, config=config)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, length, 8)).astype(np.float32)
  mask = np.ones((2, 1, length, length), np.float32)
  mask[1, ..., 3:] = 0  # the second example has 3 real tokens
  bias = rng.normal(size=(1, heads, length, length)).astype(np.float32)
  params = attention.init(jax.random.PRNGKey(0), x, x, mask, bias, True)['params']
  params = jax.tree.map(np.asarray, nn.unbox(params))
  out = attention.apply({'params': params}, x, x, mask, bias, True)

  split = lambda a: a.reshape(a.shape[:-1] + (heads, head_dim))
  q = split(x @ params['query']['kernel'])
  k = np.concatenate(
    [
      np.broadcast_to(split(params['prefix_key'])[None], (2, prefix, heads, head_dim)),
      split(x @ params['key']['kernel']),
    ],
    axis=1,
  )
  v = np.concatenate(
    [
      np.broadcast_to(split(params['prefix_value'])[None], (2, prefix, heads, head_dim)),
      split(x @ params['value']['kernel']),
    ],
    axis=1,
  )
  logits = np.einsum('bqhd,bkhd->bhqk', q, k)
  logits += np.concatenate([np.zeros((1, heads, length, prefix)), bias], axis=-1)
  full_mask = np.concatenate([np.ones((2, 1, length, prefix)), mask], axis=-1)
  logits = np.where(full_mask > 0, logits, -1e10)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, v).reshape(2, length, heads * head_dim)
  np.testing.assert_allclose(out, expected @ params['out']['kernel'], atol=1e-5)


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_cached_decoding_accounts_for_the_prefixes(method):
  model = models.EncoderDecoderModel(network.T5Config(**TINY, **PREFIXES))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), 6, 4))
  tokens = jnp.asarray(_batch(np.random.default_rng(0))['encoder_input_tokens'])
  decode = lambda use_cache: inference.predict_batch(
    model,
    params,
    tokens,
    7,
    inference.DecodeConfig(
      method=method, num_decodes=2 if method == 'beam' else 1, use_cache=use_cache
    ),
  )
  cached, cached_scores = decode(True)
  uncached, uncached_scores = decode(False)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  np.testing.assert_allclose(cached_scores, uncached_scores, atol=1e-4)
  plain = models.EncoderDecoderModel(network.T5Config(**TINY))
  without, _ = inference.predict_batch(
    plain,
    partitioning.unflatten(
      {p: a for p, a in partitioning.flatten(params).items() if '/prefix_' not in p}
    ),
    tokens,
    7,
    inference.DecodeConfig(method=method, num_decodes=2 if method == 'beam' else 1),
  )
  assert not np.array_equal(np.asarray(without), np.asarray(cached)), (
    'the random prefixes should change the decodes'
  )


def test_only_prefix_leaves_change(monkeypatch):
  from tests import test_training  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(test_training, 'TINY', dict(test_training.TINY, **PREFIXES))
  before, after, trainable_paths, _ = _train_steps(
    ['.*/prefix_(key|value)'], optimizers.adamw(1e-2, warmup_steps=0, decay_steps=10)
  )
  assert len(trainable_paths) == 2 * 1 + 4 * 1  # one encoder and one decoder layer
  for path, value in before.items():
    if path in trainable_paths:
      assert not np.allclose(after[path], value), path
    else:
      np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(value), path)
