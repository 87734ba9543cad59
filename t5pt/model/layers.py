"""The layers of the T5 network (t5x's examples/t5/layers.py, with t5pt's adapters):
dense, embedding, RMS norm, relative position biases, attention with a KV cache and deep
prompts, and the gated MLP. Every parameter is float32 and carries logical axis names;
activations run in each layer's `dtype`, layer norms and softmax in float32.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5pt.model import adapters as adapters_lib
from t5pt.model import decoding
from t5pt.model import quantization

Array = jax.Array


def _param(module, name, init, shape, axes):
  """Declares a float32 parameter annotated with its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
  """A bias-free dense layer over the last axis, [..., in] -> [..., features], with the
  LoRA / IA3 adapters that `adapters` assigns to its kernel's path. With `int8` the
  kernel is int8 with a float32 `kernel_scale` [features] (see quantization.py)."""

  features: int
  kernel_axes: tuple[str, str]
  kernel_init: nn.initializers.Initializer
  dtype: jnp.dtype = jnp.float32
  adapters: adapters_lib.AdapterConfig = adapters_lib.AdapterConfig()
  int8: bool = False

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    in_axis, out_axis = self.kernel_axes
    shape = (x.shape[-1], self.features)
    if self.int8:
      kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes),
        shape,
        jnp.int8,
      )
      kernel_scale = _param(
        self, quantization.KERNEL_SCALE, nn.initializers.ones, (shape[1],), (out_axis,)
      )
    else:
      kernel = _param(self, 'kernel', self.kernel_init, shape, self.kernel_axes)
    path = '/'.join(self.path + ('kernel',))
    x = x.astype(self.dtype)
    ia3_side = self.adapters.ia3_side(path)
    if ia3_side:
      scale = _param(
        self,
        adapters_lib.IA3_SCALE,
        nn.initializers.ones,
        (shape[0] if ia3_side == 'input' else shape[1],),
        (in_axis if ia3_side == 'input' else out_axis,),
      )
      scale = jnp.asarray(scale, self.dtype)
    if ia3_side == 'input':
      x = x * scale
    y = jnp.dot(x, jnp.asarray(kernel, self.dtype))
    if self.int8:
      y = y * jnp.asarray(kernel_scale, self.dtype)
    lora = self.adapters.lora(path)
    if lora:
      # A as torch's kaiming_uniform(a=sqrt(5)) (HF PEFT's choice); B zero.
      a = _param(
        self,
        adapters_lib.LORA_A,
        nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
        (shape[0], lora.rank),
        (in_axis, adapters_lib.LORA_RANK_AXIS),
      )
      b = _param(
        self,
        adapters_lib.LORA_B,
        nn.initializers.zeros,
        (lora.rank, shape[1]),
        (adapters_lib.LORA_RANK_AXIS, out_axis),
      )
      h = nn.Dropout(self.adapters.lora_dropout)(x, deterministic=deterministic)
      h = jnp.dot(jnp.dot(h, jnp.asarray(a, self.dtype)), jnp.asarray(b, self.dtype))
      y = y + (lora.scale * h).astype(y.dtype)
    if ia3_side == 'output':
      y = y * scale
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
  adapters: adapters_lib.AdapterConfig = adapters_lib.AdapterConfig()
  prefix_length: int = 0
  int8: bool = False

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

    With prefix_length P, trained keys and values [P, joined_kv] (deep prompts: prefix
    tuning / P-tuning v2) come before the others; every query may attend to them and they
    get no position bias.
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
      adapters=self.adapters,
      int8=self.int8,
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
    if self.prefix_length:
      key, value, mask, bias = self._prepend_prefix(key, value, mask, bias)

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
      inputs_q.shape[-1],
      ('joined_kv', 'embed'),
      init,
      self.dtype,
      self.adapters,
      self.int8,
      name='out',
    )(out, deterministic)

  def _prepend_prefix(self, key, value, mask, bias):
    """Trained [P, heads, head_dim] keys/values before key/value [batch, kv_len, ...]."""
    shape = (self.prefix_length, self.num_heads * self.head_dim)
    init = nn.initializers.normal(1.0)
    batch = key.shape[0]

    def prefix(name, x):
      p = _param(self, name, init, shape, ('prompt', 'joined_kv'))
      p = jnp.asarray(p, x.dtype).reshape((1, self.prefix_length) + x.shape[2:])
      return jnp.concatenate([jnp.broadcast_to(p, (batch,) + p.shape[1:]), x], axis=1)

    key = prefix(adapters_lib.PREFIX_KEY, key)
    value = prefix(adapters_lib.PREFIX_VALUE, value)
    if mask is not None:
      mask = jnp.concatenate(
        [jnp.ones(mask.shape[:-1] + (self.prefix_length,), mask.dtype), mask], axis=-1
      )
    if bias is not None:
      bias = jnp.concatenate(
        [jnp.zeros(bias.shape[:-1] + (self.prefix_length,), bias.dtype), bias], axis=-1
      )
    return key, value, mask, bias

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
  adapters: adapters_lib.AdapterConfig = adapters_lib.AdapterConfig()
  int8: bool = False

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    hidden = None
    for i, act in enumerate(self.activations):
      name = f'wi_{i}' if len(self.activations) > 1 else 'wi'
      h = Dense(
        self.mlp_dim, ('embed', 'mlp'), init, self.dtype, self.adapters, self.int8, name=name
      )(x, deterministic)
      h = h if act == 'linear' else getattr(nn, act)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
      hidden, deterministic=deterministic
    )
    return Dense(
      x.shape[-1], ('mlp', 'embed'), init, self.dtype, self.adapters, self.int8, name='wo'
    )(hidden, deterministic)
