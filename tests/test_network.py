"""The T5 network: t5x parameter tree and axes, masks, prompt injection, variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.model import layers
from t5pt.model import network
from t5pt.runtime import partitioning
from tests.conftest import TINY


def _init(cfg, in_len=6, tgt_len=5, seed=0):
  module = network.Transformer(cfg)
  tokens = jnp.ones((1, in_len), jnp.int32)
  targets = jnp.ones((1, tgt_len), jnp.int32)
  boxed = module.init(jax.random.PRNGKey(seed), tokens, targets, targets, enable_dropout=False)[
    'params'
  ]
  return module, boxed, nn.unbox(boxed)


def _logits(module, params, enc, dec_in, dec_tgt, **kw):
  return module.apply(
    {'params': params},
    jnp.asarray(enc),
    jnp.asarray(dec_in),
    jnp.asarray(dec_tgt),
    enable_dropout=False,
    **kw,
  )


def test_parameter_tree_matches_t5x_names_shapes_and_axes():
  cfg = network.T5Config(**TINY, prompt_length=3)
  _, boxed, params = _init(cfg)
  flat = partitioning.flatten(params)
  expected = {
    'token_embedder/embedding': (32, 16),
    'encoder/prompt/prompt': (3, 16),
    'encoder/relpos_bias/rel_embedding': (2, 8),
    'encoder/layers_1/attention/query/kernel': (16, 16),
    'encoder/layers_1/attention/out/kernel': (16, 16),
    'encoder/layers_0/mlp/wi_0/kernel': (16, 24),
    'encoder/layers_0/mlp/wi_1/kernel': (16, 24),
    'encoder/layers_0/mlp/wo/kernel': (24, 16),
    'encoder/layers_0/pre_attention_layer_norm/scale': (16,),
    'encoder/encoder_norm/scale': (16,),
    'decoder/layers_1/self_attention/key/kernel': (16, 16),
    'decoder/layers_1/encoder_decoder_attention/value/kernel': (16, 16),
    'decoder/layers_0/pre_cross_attention_layer_norm/scale': (16,),
    'decoder/decoder_norm/scale': (16,),
    'decoder/logits_dense/kernel': (16, 32),
  }
  for path, shape in expected.items():
    assert flat[path].shape == shape, path
  assert len(flat) == 2 + 1 + 1 + 2 * 9 + 1 + 1 + 2 * 14 + 1
  specs = partitioning.flatten(nn.get_partition_spec(boxed))
  for path, value in flat.items():
    assert len(specs[path]) == value.ndim, path
    assert all(isinstance(a, str) for a in specs[path]), path
  assert tuple(specs['encoder/layers_0/attention/query/kernel']) == ('embed', 'joined_kv')
  assert tuple(specs['decoder/logits_dense/kernel']) == ('embed', 'vocab')
  assert tuple(specs['encoder/prompt/prompt']) == ('prompt', 'embed')


def test_t5_1_0_variant_relu_and_tied_embeddings():
  cfg = network.T5Config(**{**TINY, 'mlp_activations': ('relu',), 'logits_via_embedding': True})
  module, _, params = _init(cfg)
  flat = partitioning.flatten(params)
  assert 'encoder/layers_0/mlp/wi/kernel' in flat
  assert not any('logits_dense' in k or 'wi_0' in k for k in flat)
  logits = _logits(module, params, [[5, 6, 7, 1, 0, 0]], [[0, 4, 5, 1, 0]], [[4, 5, 1, 0, 0]])
  assert logits.shape == (1, 5, 32) and np.isfinite(logits).all()


def test_relative_position_buckets_match_t5_reference_values():
  rel = np.arange(-10, 11)[None, :]
  bidir = layers.relative_position_bucket(rel, True, 8, 16)[0]
  # Bidirectional: 4 buckets per side, 2 exact; keys after the query use the upper half.
  assert bidir[10] == 0 and bidir[9] == 1 and bidir[11] == 5
  assert bidir[0] == 3 and bidir[20] == 7
  causal = layers.relative_position_bucket(rel, False, 8, 16)[0]
  assert (causal[10:] == 0).all() and causal[9] == 1 and causal[0] == 6


@pytest.mark.parametrize(
  'tuning', [{}, {'prompt_length': 3}, {'prefix_length': 2, 'decoder_prefix_length': 3}]
)
def test_padding_changes_no_output(tuning):
  """Extra padding (encoder and decoder) leaves every real position's logits unchanged."""
  cfg = network.T5Config(**TINY, **tuning)
  module, _, params = _init(cfg)
  enc, dec_in, dec_tgt = [[5, 6, 7, 8, 1]], [[0, 9, 10, 1]], [[9, 10, 1, 4]]
  short = _logits(module, params, enc, dec_in, dec_tgt)
  pad = lambda x, n: np.pad(np.asarray(x), ((0, 0), (0, n)))
  long = _logits(module, params, pad(enc, 7), pad(dec_in, 3), pad(dec_tgt, 3))
  np.testing.assert_allclose(long[:, :4], short, atol=1e-5)


def test_decoder_is_causal():
  cfg = network.T5Config(**TINY)
  module, _, params = _init(cfg)
  enc = [[5, 6, 7, 1]]
  a = _logits(module, params, enc, [[0, 9, 10, 11]], [[9, 10, 11, 1]])
  b = _logits(module, params, enc, [[0, 9, 20, 21]], [[9, 20, 21, 1]])
  np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-6)
  assert not np.allclose(a[:, 2:], b[:, 2:])


def test_prompt_is_prepended_and_seen_by_the_decoder():
  cfg = network.T5Config(**TINY, prompt_length=3)
  module, _, params = _init(cfg)
  encoded = module.apply(
    {'params': params}, jnp.asarray([[5, 6, 1, 0]]), enable_dropout=False, method=module.encode
  )
  assert encoded.shape == (1, 3 + 4, 16)
  args = ([[5, 6, 1, 0]], [[0, 9, 1]], [[9, 1, 0]])
  before = _logits(module, params, *args)
  changed = jax.tree_util.tree_map(lambda x: x, params)
  changed['encoder']['prompt']['prompt'] = params['encoder']['prompt']['prompt'] + 1.0
  assert not np.allclose(before, _logits(module, changed, *args))


def test_packed_batch_equals_separate_examples_without_prompt():
  cfg = network.T5Config(**TINY)
  module, _, params = _init(cfg)
  first = _logits(module, params, [[5, 6, 1]], [[0, 9, 1]], [[9, 1, 0]])
  second = _logits(module, params, [[7, 8, 9, 1]], [[0, 4]], [[4, 1]])
  packed = _logits(
    module,
    params,
    [[5, 6, 1, 7, 8, 9, 1, 0]],
    [[0, 9, 0, 4, 0]],
    [[9, 1, 4, 1, 0]],
    encoder_segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]]),
    decoder_segment_ids=jnp.asarray([[1, 1, 2, 2, 0]]),
  )
  np.testing.assert_allclose(packed[:, :2], first[:, :2], atol=1e-5)
  np.testing.assert_allclose(packed[:, 2:4], second, atol=1e-5)


def test_packed_segments_with_prompt_do_not_leak():
  cfg = network.T5Config(**TINY, prompt_length=2)
  module, _, params = _init(cfg)
  kw = dict(
    encoder_segment_ids=jnp.asarray([[1, 1, 2, 2, 2]]),
    decoder_segment_ids=jnp.asarray([[1, 1, 2, 2]]),
  )
  a = _logits(module, params, [[5, 1, 7, 8, 1]], [[0, 9, 0, 4]], [[9, 1, 4, 1]], **kw)
  b = _logits(module, params, [[5, 1, 3, 3, 1]], [[0, 9, 0, 6]], [[9, 1, 6, 1]], **kw)
  np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-6)


def test_bfloat16_activations_track_float32():
  cfg32 = network.T5Config(**TINY, prompt_length=2)
  cfg16 = network.T5Config(**{**TINY, 'dtype': 'bfloat16'}, prompt_length=2)
  module32, _, params = _init(cfg32)
  module16 = network.Transformer(cfg16)
  args = ([[5, 6, 7, 1]], [[0, 9, 10]], [[9, 10, 1]])
  l32 = _logits(module32, params, *args)
  l16 = _logits(module16, params, *args)
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(l16, l32, atol=0.1, rtol=0.05)


def test_bfloat16_embedding_gradient_sums_repeated_tokens_in_float32():
  embed = layers.Embed(num_embeddings=4, features=8, dtype=jnp.bfloat16)
  params = nn.unbox(embed.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  tokens = jnp.ones((1, 4096), jnp.int32)
  weights = jax.random.uniform(jax.random.PRNGKey(1), (1, 4096, 8)).astype(jnp.bfloat16)
  grad = jax.grad(lambda p: jnp.sum(embed.apply(p, tokens).astype(jnp.float32) * weights))(params)[
    'params'
  ]['embedding']
  exact = np.asarray(weights, np.float64).sum(axis=(0, 1))
  assert grad.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(grad[1]), exact, rtol=1e-5)  # a bf16 sum stalls: 88% off
  np.testing.assert_array_equal(np.asarray(grad)[[0, 2, 3]], 0)
