"""The layers of the T5 network (t5x's examples/t5/layers.py): dense, embedding, RMS
norm, relative position biases, attention with a KV cache, and the gated MLP. Every
parameter is float32 and carries logical axis names; activations run in each layer's
`dtype`, layer norms and softmax in float32. Dense layers and attention call the tuning
methods a `config` (network.T5Config) enables at their insertion points (methods/base.py).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5pt.model import decoding
from t5pt.model import methods
from t5pt.model.methods import base

Array = jax.Array


_param = base.param


def _enabled(config) -> tuple:
  return () if config is None else methods.enabled(config)


class Dense(nn.Module):
  """A bias-free dense layer over the last axis, [..., in] -> [..., features]. The methods
  `config` enables may store the kernel differently (int8), change the input (IA3 on
  mlp/wo) and add to or scale the output (LoRA, IA3), by the kernel's path."""

  features: int
  kernel_axes: tuple[str, str]
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32
  config: Any = None  # the network.T5Config whose methods apply; None: a plain dense layer

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    shape = (x.shape[-1], self.features)
    enabled = _enabled(self.config)
    stored = next(
      (
        found
        for m in enabled
        if (found := m.dense_kernel(self, self.config, shape, self.kernel_axes, self.kernel_init))
      ),
      None,
    )
    if stored:
      kernel, rescale = stored
    else:
      kernel, rescale = _param(self, 'kernel', self.kernel_init, shape, self.kernel_axes), None
    path = '/'.join(self.path + ('kernel',))
    x = x.astype(self.dtype)
    for method in enabled:
      x = method.dense_input(self, self.config, path, x)
    y = jnp.dot(x, jnp.asarray(kernel, self.dtype))
    if rescale:
      y = rescale(y)
    for method in enabled:
      y = method.dense_output(self, self.config, path, x, y, deterministic)
    return y


class Embed(nn.Module):
  """Token embedding table; `attend` gives logits when embeddings are tied."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = _param(
      self,
      'embedding',
      nn.initializers.normal(1.0),
      (self.num_embeddings, self.features),
      ('vocab', 'embed'),
    )

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    # Gather, then cast: the gradient's scatter-add then sums repeated tokens in the
    # parameter dtype (float32), not in bf16 as a cast-then-gather would.
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, query: Array) -> Array:
    """[batch, length, embed] -> [batch, length, vocab]."""
    return jnp.dot(query, jnp.asarray(self.embedding, self.dtype).T)


class RMSNorm(nn.Module):
  """T5 layer norm: no mean subtraction, no bias; computed in float32."""

  dtype: jnp.dtype = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (y * jnp.asarray(scale, jnp.float32)).astype(self.dtype)


def relative_position_bucket(
  relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """T5's bucketing of (key - query) distances: exact when close, log-spaced when far."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
    np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    / np.log(max_distance / max_exact)
    * (num_buckets - max_exact)
  ).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Learned per-head attention bias from bucketed relative positions."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
    """Returns the bias [1, heads, qlen, klen]."""
    context = np.arange(qlen, dtype=np.int32)[:, None]
    memory = np.arange(klen, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(
      memory - context, bidirectional, self.num_buckets, self.max_distance
    )
    table = _param(
      self,
      'rel_embedding',
      nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
      (self.num_heads, self.num_buckets),
      ('heads', 'relpos_buckets'),
    )
    bias = jnp.take(jnp.asarray(table, self.dtype), buckets, axis=1)
    return bias[None]


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention without 1/sqrt(d) (T5 folds it into the init)."""

  num_heads: int
  head_dim: int
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32
  config: Any = None  # the network.T5Config whose methods apply

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array,
    mask: Optional[Array],
    bias: Optional[Array],
    deterministic: bool,
    decode: Optional[str] = None,
  ) -> Array:
    """inputs_q [batch, q_len, embed], inputs_kv [batch, kv_len, embed],
    mask [batch, 1, q_len, kv_len] (1 = may attend), bias [1|batch, heads, q_len, kv_len]
    -> [batch, q_len, embed].

    decode='self' keeps a key/value cache [batch, max_len, heads, head_dim] in the 'cache'
    collection: the first call (full length) creates it empty, each later call appends the
    one new position. decode='cross' projects the encoder states once, on the first call,
    and reuses them.

    The enabled methods may then extend the keys and values (deep prompts' trained
    prefixes, which every query may attend to).
    """
    joined = self.num_heads * self.head_dim
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    depth_scaling = np.sqrt(self.head_dim).astype(np.float32)
    query_init = lambda *a: init(*a) / depth_scaling
    dense = functools.partial(
      Dense,
      features=joined,
      kernel_axes=('embed', 'joined_kv'),
      dtype=self.dtype,
      config=self.config,
    )
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    query = split(dense(kernel_init=query_init, name='query')(inputs_q, deterministic))
    project = lambda name: split(dense(kernel_init=init, name=name)(inputs_kv, deterministic))
    if decode == 'cross':
      key, value = self._cached_encoder_projections(project)
    else:
      key, value = project('key'), project('value')
    if decode == 'self':
      key, value = self._extend_cache(key, value)
    for method in _enabled(self.config):
      key, value, mask, bias = method.attention_kv(self, self.config, key, value, mask, bias)

    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask > 0, logits, decoding.NEG_INF)
    weights = jax.nn.softmax(logits).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      # Broadcast over queries, as t5x does.
      keep = jax.random.bernoulli(
        self.make_rng('dropout'),
        1.0 - self.dropout_rate,
        weights.shape[:2] + (1,) + weights.shape[3:],
      )
      weights = weights * keep.astype(self.dtype) / (1.0 - self.dropout_rate)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(
      inputs_q.shape[-1], ('joined_kv', 'embed'), init, self.dtype, self.config, name='out'
    )(out, deterministic)

  def _extend_cache(self, key: Array, value: Array) -> tuple[Array, Array]:
    initialised = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    if not initialised:
      return key, value
    position = (0, index.value, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, position)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, position)
    index.value = index.value + key.shape[1]
    return cached_key.value, cached_value.value

  def _cached_encoder_projections(self, project) -> tuple[Array, Array]:
    if self.has_variable('cache', 'encoder_key'):
      return (
        self.get_variable('cache', 'encoder_key'),
        self.get_variable('cache', 'encoder_value'),
      )
    key, value = project('key'), project('value')
    self.put_variable('cache', 'encoder_key', key)
    self.put_variable('cache', 'encoder_value', value)
    return key, value


class MlpBlock(nn.Module):
  """Gated (T5 1.1: gelu * linear) or plain (T5 1.0: relu) feed-forward block."""

  mlp_dim: int
  activations: Sequence[str]
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32
  config: Any = None  # the network.T5Config whose methods apply

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    hidden = None
    for i, act in enumerate(self.activations):
      name = f'wi_{i}' if len(self.activations) > 1 else 'wi'
      h = Dense(self.mlp_dim, ('embed', 'mlp'), init, self.dtype, self.config, name=name)(
        x, deterministic
      )
      h = h if act == 'linear' else getattr(nn, act)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
      hidden, deterministic=deterministic
    )
    return Dense(x.shape[-1], ('mlp', 'embed'), init, self.dtype, self.config, name='wo')(
      hidden, deterministic
    )
