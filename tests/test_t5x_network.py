"""t5pt.t5x_bridge.t5x_network: t5pt's network under t5x's module interface, without t5x installed.

The module must compute exactly what t5pt's network computes (logits, encode/decode,
one-token cached decoding as t5x's decoding loop drives it, beam-expandable caches), name
the logical axes of every parameter in `params_axes`, and pick the trainable leaves.
"""

import io

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from t5pt.checkpoints import opening
from t5pt.model.methods import ia3
from t5pt.model.methods import lora
from t5pt.model import network
from t5pt.model import prompts
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.t5x_bridge import t5x_network
from tests.conftest import TINY

METHODS = {
  'prompt': dict(prompt_length=3),
  'lora': dict(lora_rules=lora.DEFAULT_LORA_RULES),
  'prompt_lora': dict(prompt_length=2, lora_rules=lora.DEFAULT_LORA_RULES),
  'ia3': dict(ia3_pattern=ia3.DEFAULT_IA3_PATTERN),
  'deep_prompt': dict(prefix_length=2, decoder_prefix_length=2),
}
BATCH, IN_LEN, TGT_LEN = 2, 7, 5


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, TINY['vocab_size'], (BATCH, IN_LEN))
  enc[0, 5:] = 0  # padding
  tgt = rng.integers(3, TINY['vocab_size'], (BATCH, TGT_LEN))
  tgt[1, 3:] = 0
  dec_in = np.concatenate([np.zeros((BATCH, 1), int), tgt[:, :-1]], axis=1)
  return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)


def _t5x_init(module):
  """What t5x's EncoderDecoderModel.get_initial_variables does."""
  ones = jnp.ones((BATCH, IN_LEN), jnp.float32), jnp.ones((BATCH, TGT_LEN), jnp.float32)
  return module.init(
    jax.random.PRNGKey(0), ones[0], ones[1], ones[1], decode=False, enable_dropout=False
  )


def _randomised(params, seed=1):
  """Non-trivial values everywhere (LoRA's B and IA3's scales start as no-ops)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )


@pytest.fixture(params=sorted(METHODS))
def both(request):
  cfg = network.T5Config(**TINY, **METHODS[request.param])
  module = t5x_network.Transformer(cfg)
  variables = _t5x_init(module)
  return network.Transformer(cfg), module, _randomised(variables['params']), variables


def test_init_gives_plain_params_and_axes_for_every_parameter(both):
  reference, module, _, variables = both
  assert set(variables) == {'params', 'params_axes'}
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  assert all(isinstance(v, jax.Array) for v in params.values())
  axes = traverse_util.flatten_dict(variables['params_axes'], sep='/')
  # t5x's own check (train_state._validate_params_axes) in its terms.
  names = flax.linen.partitioning.get_axis_names(variables['params_axes'])
  assert set(traverse_util.flatten_dict(names, sep='/')) == set(params)
  assert all(k.endswith('_axes') for k in axes)
  boxed = reference.init(jax.random.PRNGKey(0), *_batch(), enable_dropout=False)['params']
  expected = partitioning.flatten(
    jax.tree.map(lambda b: b.names, boxed, is_leaf=lambda x: isinstance(x, flax.linen.Partitioned))
  )
  assert {k: tuple(v.names) for k, v in axes.items()} == {
    f'{k}_axes': tuple(v) for k, v in expected.items()
  }
  for name, value in params.items():
    assert len(axes[f'{name}_axes'].names) == value.ndim, name


def test_logits_encode_and_decode_equal_t5pts_network(both):
  reference, module, params, _ = both
  enc, dec_in, tgt = _batch()
  expected = reference.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)
  got = module.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False, decode=False)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  np.testing.assert_allclose(
    encoded,
    reference.apply({'params': params}, enc, enable_dropout=False, method=reference.encode),
    atol=1e-6,
  )
  decoded = module.apply(
    {'params': params}, encoded, enc, dec_in, tgt, enable_dropout=False, method=module.decode
  )
  np.testing.assert_allclose(decoded, expected, atol=1e-6)


def test_cached_decoding_as_t5x_drives_it_equals_teacher_forced_logits(both):
  """t5x makes the cache from __call__(decode=True) on dummy inputs, then calls
  decode(decode=True, max_decode_length) one token at a time, the encoder's output
  and the cache expanded to batch * beams."""
  _, module, params, _ = both
  enc, dec_in, tgt = _batch()
  full = module.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)
  _, initial = module.apply(
    {'params': params},
    encoder_input_tokens=jnp.ones_like(enc),
    decoder_input_tokens=jnp.ones_like(dec_in),
    decoder_target_tokens=jnp.ones_like(dec_in),
    mutable=['cache'],
    decode=True,
    enable_dropout=False,
  )
  beams = 3
  expand = lambda x: jnp.repeat(x, beams, axis=0)  # t5x's flat_batch_beam_expand
  cache = traverse_util.flatten_dict(flax.core.unfreeze(initial['cache']))
  for path, value in cache.items():
    # t5x's cache_map expands every leaf but 'cache_index' along its batch dimension.
    if path[-1] == 'cache_index':
      assert value.ndim == 0, path
    else:
      assert value.shape[0] == BATCH, path
      cache[path] = expand(value)
  cache = traverse_util.unflatten_dict(cache)
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  encoded, raw = expand(encoded), expand(enc)
  for position in range(TGT_LEN):
    token = expand(dec_in[:, position : position + 1])
    logits, new = module.apply(
      {'params': params, 'cache': cache},
      encoded,
      raw,
      token,
      token,
      enable_dropout=False,
      decode=True,
      max_decode_length=TGT_LEN,
      mutable=['cache'],
      method=module.decode,
    )
    cache = new['cache']
    real = np.asarray(tgt[:, position] > 0)  # a padded target's logits mean nothing
    np.testing.assert_allclose(logits[::beams, 0][real], full[real, position], atol=1e-5)


def test_trainable_filter_picks_what_the_method_adds():
  def trained(cfg, trainable=None):
    variables = _t5x_init(t5x_network.Transformer(cfg))
    keep = t5x_network.trainable_filter(cfg, trainable)
    return sorted(
      k for k, v in traverse_util.flatten_dict(variables['params'], sep='/').items() if keep(k, v)
    )

  assert trained(network.T5Config(**TINY, **METHODS['prompt'])) == [network.PROMPT_PATH]
  lora = trained(network.T5Config(**TINY, **METHODS['lora']))
  assert lora and all(k.endswith(('/lora_a', '/lora_b')) for k in lora)
  assert len(lora) == 2 * 2 * (2 + 2 * 2)  # q and v of 2 encoder + 2x2 decoder attentions
  assert trained(network.T5Config(**TINY), ['decoder/decoder_norm/scale']) == [
    'decoder/decoder_norm/scale'
  ]
  with pytest.raises(UserError, match='Nothing would train'):
    t5x_network.trainable_filter(network.T5Config(**TINY))


def test_prompt_init_from_a_file_a_t5pt_run_exported(tmp_path):
  values = np.arange(3 * TINY['emb_dim'], dtype=np.float32).reshape(3, -1)
  buffer = io.BytesIO()
  np.save(buffer, values)
  (tmp_path / 'prompt.npy').write_bytes(buffer.getvalue())
  init = lambda *a: prompts.from_file(*a, path=str(tmp_path / 'prompt.npy'))
  cfg = network.T5Config(**TINY, prompt_length=3)
  # t5x initialises under jit (and under eval_shape for shapes).
  module = t5x_network.Transformer(cfg, prompt_init=init)
  variables = jax.jit(lambda: _t5x_init(module))()
  np.testing.assert_array_equal(variables['params']['encoder']['prompt']['prompt'], values)
  with pytest.raises(UserError, match='embedding_checkpoint'):
    _t5x_init(t5x_network.Transformer(cfg, prompt_init=prompts.sampled_vocab))


def test_prompt_init_samples_the_base_checkpoints_embedding(base_checkpoint):
  base = opening.open_base(base_checkpoint)
  cfg = base.reconcile(network.T5Config(prompt_length=4))
  module = t5x_network.Transformer(
    cfg, prompt_init=prompts.sampled_vocab, embedding_checkpoint=base_checkpoint
  )
  prompt = np.asarray(_t5x_init(module)['params']['encoder']['prompt']['prompt'])
  embedding = base.read(network.EMBEDDING_PATH)
  rows = [int(np.argmin(np.abs(embedding - p).sum(-1))) for p in prompt]
  np.testing.assert_array_equal(embedding[rows], prompt)
  assert len(set(rows)) == 4 and min(rows) >= 3


def test_int8_base_is_refused_with_the_fix():
  with pytest.raises(UserError, match='t5pt.train'):
    _t5x_init(t5x_network.Transformer(network.T5Config(**TINY, int8_kernels=True)))


def test_factor_rules_add_t5pts_axes():
  rules = t5x_network.factor_rules({'embed': 'row'})
  assert rules == {'embed': 'row', 'prompt': 'none', 'lora_rank': 'none', 'adapter': 'none'}
