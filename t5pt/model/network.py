"""T5 1.1 / Flan-T5 (and T5 1.0) encoder-decoder in flax.linen, with a soft prompt.

Parameter names, shapes and logical axis names follow t5x's `examples/t5`, so T5X
checkpoints map onto this tree one to one:

    token_embedder/embedding                                  [vocab, embed]
    encoder/relpos_bias/rel_embedding                         [heads, relpos_buckets]
    encoder/layers_N/pre_attention_layer_norm/scale           [embed]
    encoder/layers_N/attention/{query,key,value}/kernel       [embed, joined_kv]
    encoder/layers_N/attention/out/kernel                     [joined_kv, embed]
    encoder/layers_N/pre_mlp_layer_norm/scale                 [embed]
    encoder/layers_N/mlp/{wi_0,wi_1}/kernel  (or mlp/wi)      [embed, mlp]
    encoder/layers_N/mlp/wo/kernel                            [mlp, embed]
    encoder/encoder_norm/scale                                [embed]
    decoder/relpos_bias/rel_embedding, decoder/decoder_norm/scale
    decoder/layers_N/{pre_self_attention_layer_norm, self_attention,
                      pre_cross_attention_layer_norm, encoder_decoder_attention,
                      pre_mlp_layer_norm, mlp}/...
    decoder/logits_dense/kernel                               [embed, vocab]   (untied only)

Added by a tuning method (t5pt/model/methods/, one module each), e.g.:

    encoder/prompt/prompt                                     [prompt, embed]  (prompt_length)
    .../<dense>/lora_a, lora_b                                [in, lora_rank], [lora_rank, out]
    .../<dense>/ia3_scale                                     [in] or [out]    (ia3_pattern)
    .../<attention>/prefix_key, prefix_value                  [prompt, joined_kv]
    .../<sublayer>_parallel_adapter/down, up                  [embed, adapter], [adapter, embed]
    .../<dense>/kernel_scale                                  [out]   (int8_kernels: kernel int8)

The network calls the methods the config enables at fixed insertion points (the embedded
input, every dense layer, every attention's keys and values, every sublayer's output);
it never names a method.

Parameters are stored in float32 (or whatever dtype the caller casts them to); activations
run in `T5Config.dtype`, with layer norms and softmax computed in float32. The layers
themselves are in layers.py, as in t5x.
"""

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gin
from t5pt.model import layers
from t5pt.model import masks
from t5pt.model import methods
from t5pt.model.methods import prompt as prompt_method
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError

Array = jax.Array

PROMPT_PATH = prompt_method.PROMPT_PATH
EMBEDDING_PATH = 'token_embedder/embedding'
LOGITS_PATH = 'decoder/logits_dense/kernel'


def is_added_by_tuning(path: str) -> bool:
  """Whether a parameter exists only for tuning (prompt, adapters), not in a base model."""
  return methods.is_added(path)


ARCHITECTURE_FIELDS = (
  'vocab_size',
  'emb_dim',
  'num_heads',
  'num_encoder_layers',
  'num_decoder_layers',
  'head_dim',
  'mlp_dim',
  'mlp_activations',
  'logits_via_embedding',
  'relative_attention_num_buckets',
  'relative_attention_max_distance',
)


@gin.configurable(module='network')
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes and options of a T5 network; the one place model shapes are defined.

  Architecture fields left as None are taken from the base checkpoint, which knows them
  (HF config.json, or the tensor shapes of a T5X checkpoint); see `reconcile`.
  """

  vocab_size: Optional[int] = None
  dtype: str = 'float32'
  emb_dim: Optional[int] = None
  num_heads: Optional[int] = None
  num_encoder_layers: Optional[int] = None
  num_decoder_layers: Optional[int] = None
  head_dim: Optional[int] = None
  mlp_dim: Optional[int] = None
  mlp_activations: Optional[Sequence[str]] = None
  dropout_rate: float = 0.0
  logits_via_embedding: Optional[bool] = None
  relative_attention_num_buckets: Optional[int] = None
  relative_attention_max_distance: Optional[int] = None
  prompt_length: int = 0
  lora_rules: Sequence = ()  # (kernel path regex, rank, alpha); see methods/lora.py
  lora_dropout: float = 0.0
  ia3_pattern: Optional[str] = None  # kernel path regex for IA3 scales
  prefix_length: int = 0  # deep prompts: per-layer key/value prefixes, encoder
  decoder_prefix_length: int = 0  # ... and decoder self- and cross-attention
  int8_kernels: bool = False  # dense kernels int8 + kernel_scale; see methods/int8.py
  remat_policy: str = 'none'  # what a layer keeps for the backward pass: REMAT_POLICIES
  # Methods without a field above: {method name: {setting: value}} (t5pt/model/methods/).
  methods: Mapping[str, Mapping[str, object]] = ()

  def __post_init__(self):
    # gin and JSON give lists and dicts; the config must stay hashable.
    rules = tuple(tuple(rule) for rule in self.lora_rules)
    object.__setattr__(self, 'lora_rules', rules)
    if self.mlp_activations is not None:
      object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    object.__setattr__(self, 'methods', _frozen_settings(self.methods))

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  def tuned_parameters(self) -> tuple[str, ...]:
    """Regexes of the parameters the tuning methods add (prompt, LoRA factors, IA3 scales,
    deep-prompt prefixes, ...): what trains when TRAINABLE is not set."""
    return methods.trainable(self)

  def method_settings(self, name: str) -> Optional[dict]:
    """{setting: value} of the method `name` in `methods`; None when it is not there."""
    found = dict(self.methods).get(name)
    return None if found is None else dict(found)

  def check(self) -> 'T5Config':
    """Checks every value a user sets (sizes, options and each method's settings)."""
    checks.network_config(self)
    methods.check(self)
    return self

  def architecture(self) -> dict:
    return {f: getattr(self, f) for f in ARCHITECTURE_FIELDS}

  def require_complete(self) -> 'T5Config':
    """Returns self, or raises a UserError naming the architecture fields still unset."""
    unset = [f for f in ARCHITECTURE_FIELDS if getattr(self, f) is None]
    if unset:
      raise UserError(
        f'network.T5Config.{unset[0]} is not set ({len(unset)} size field(s) unset: '
        f'{unset}). Include a model file such as gin/models/t5_1_1_small.gin, or set '
        'INITIAL_CHECKPOINT_PATH to a checkpoint that carries its sizes (an HF folder '
        'with config.json, or a T5X checkpoint).'
      )
    return self

  def reconcile(
    self, facts: Mapping[str, object], source: str, defaults: Mapping[str, object] = ()
  ) -> 'T5Config':
    """Fills unset fields from a checkpoint and checks the set ones against it.

    `facts` are what the checkpoint states (a mismatch with gin is an error naming both
    values); `defaults` are conventional values for what the checkpoint cannot tell
    (e.g. a T5X checkpoint's relative-attention max distance), used only if gin is unset.
    """
    updates, conflicts = {}, []
    for name, value in facts.items():
      mine = getattr(self, name)
      if mine is None:
        updates[name] = value
      elif _normalise(mine) != _normalise(value):
        conflicts.append(
          f'network.T5Config.{name} = {mine!r} in gin, but {value!r} in the checkpoint'
        )
    if conflicts:
      raise UserError(
        f'The gin model sizes disagree with {source}:\n  '
        + '\n  '.join(conflicts)
        + '\nUse the model gin file that matches the '
        'checkpoint (gin/models/*.gin), or drop the size bindings and let the '
        'checkpoint supply them.'
      )
    for name, value in dict(defaults).items():
      if getattr(self, name) is None and name not in updates:
        updates[name] = value
    return dataclasses.replace(self, **updates)


# What an encoder/decoder layer saves for the backward pass; the rest is recomputed there.
# t5x's scalable_t5 names: 'none' (save everything), 'minimal', 'full' (save only the
# layer's input); 'dots' keeps attention scores too.
REMAT_POLICIES = {
  'none': None,
  'dots': jax.checkpoint_policies.checkpoint_dots,  # every matmul output
  'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # projections only
  'full': jax.checkpoint_policies.nothing_saveable,
}


def _rematerialised(layer_cls, policy_name: str, static_argnums: tuple[int, ...]):
  """`layer_cls`, recomputing its activations in the backward pass under the named policy
  (same parameters and results; less memory, about one more forward pass of compute)."""
  policy = REMAT_POLICIES[policy_name]
  if policy is None:
    return layer_cls
  return nn.remat(layer_cls, policy=policy, static_argnums=static_argnums)


def _normalise(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _frozen_settings(value) -> tuple:
  """{name: {setting: value}} (or its JSON form, nested pairs) as sorted nested tuples."""
  items = value.items() if isinstance(value, Mapping) else value
  frozen = []
  for name, settings in items:
    pairs = settings.items() if isinstance(settings, Mapping) else settings
    frozen.append((name, tuple(sorted((k, _normalise(v)) for k, v in pairs))))
  return tuple(sorted(frozen))


def _mlp(cfg: T5Config, dtype) -> layers.MlpBlock:
  """The MLP block of an encoder or decoder layer."""
  return layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, cfg, name='mlp')


def _sublayer_output(layer: nn.Module, name: str, x: Array, y: Array, deterministic: bool):
  """A sublayer's output [batch, length, embed] as the enabled methods change it, given its
  (normed) input x."""
  for method in methods.enabled(layer.config):
    y = method.sublayer_output(layer, layer.config, name, x, y, deterministic)
  return y


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    h = layers.RMSNorm(dtype, name='pre_attention_layer_norm')(x)
    y = layers.MultiHeadAttention(
      cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, cfg, name='attention'
    )(h, h, mask, bias, deterministic)
    y = _sublayer_output(self, 'attention', h, y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    h = layers.RMSNorm(dtype, name='pre_mlp_layer_norm')(x)
    y = _sublayer_output(self, 'mlp', h, _mlp(cfg, dtype)(h, deterministic), deterministic)
    return x + dropout(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: T5Config
  cache_encoder_projections: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    encoded: Array,
    self_mask: Array,
    cross_mask: Array,
    bias: Array,
    deterministic: bool,
    decode: bool = False,
  ) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    attention = functools.partial(
      layers.MultiHeadAttention, cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, cfg
    )
    h = layers.RMSNorm(dtype, name='pre_self_attention_layer_norm')(x)
    y = attention(name='self_attention')(
      h, h, self_mask, bias, deterministic, 'self' if decode else None
    )
    y = _sublayer_output(self, 'self_attention', h, y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    h = layers.RMSNorm(dtype, name='pre_cross_attention_layer_norm')(x)
    y = attention(name='encoder_decoder_attention')(
      h, encoded, cross_mask, None, deterministic, self._cross_decode(decode)
    )
    y = _sublayer_output(self, 'encoder_decoder_attention', h, y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    h = layers.RMSNorm(dtype, name='pre_mlp_layer_norm')(x)
    y = _sublayer_output(self, 'mlp', h, _mlp(cfg, dtype)(h, deterministic), deterministic)
    return x + dropout(y, deterministic=deterministic)

  def _cross_decode(self, decode: bool) -> Optional[str]:
    # Cached, the encoder's keys and values are projected once per sequence; uncached
    # (t5x's decoding loop, whose cache is made before the encoder runs), every step.
    return 'cross' if decode and self.cache_encoder_projections else None


def _relpos(cfg: T5Config, name: str) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
    cfg.relative_attention_num_buckets,
    cfg.relative_attention_max_distance,
    cfg.num_heads,
    cfg.activation_dtype,
    name=name,
  )


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Optional[Array],
    deterministic: bool,
    prompt: Optional[Array] = None,
    prompt_mask: Optional[Array] = None,
  ) -> Array:
    """[batch, length] tokens -> [batch, prompt_length + length, embed].

    `prompt` [batch, P, embed] (with `prompt_mask` [batch, P]) replaces the trained prompt
    parameter with one prompt per example: one frozen model serving several tasks.
    """
    cfg = self.config
    dtype = cfg.activation_dtype
    p = methods.input_positions(cfg)
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    for method in methods.enabled(cfg):
      x = method.embedded_input(self, cfg, x, prompt)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    valid = masks.encoder_key_mask(encoder_input_tokens, p, prompt_mask)
    segments = (
      None if encoder_segment_ids is None else masks.segments_with_prompt(encoder_segment_ids, p)
    )
    is_prompt = jnp.arange(x.shape[1]) < p
    mask = masks.attention_mask(valid, valid, segments, segments, is_prompt)
    bias = _relpos(cfg, 'relpos_bias')(x.shape[1], x.shape[1], bidirectional=True)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    layer = _rematerialised(EncoderLayer, cfg.remat_policy, static_argnums=(4,))
    for i in range(cfg.num_encoder_layers):
      x = layer(cfg, name=f'layers_{i}')(x, mask, bias, deterministic)
    x = layers.RMSNorm(dtype, name='encoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module
  cache_encoder_projections: bool = True

  @nn.compact
  def __call__(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Optional[Array],
    decoder_segment_ids: Optional[Array],
    deterministic: bool,
    encoder_prompt_mask: Optional[Array] = None,
    decode: bool = False,
    max_decode_length: Optional[int] = None,
  ) -> Array:
    """encoded [batch, P + in_len, embed] -> logits [batch, tgt_len, vocab] (float32).

    decode=True runs incrementally with a key/value cache: a first call with
    [batch, max_decode_length] inputs creates the cache (its logits are meaningless),
    then each call takes one position [batch, 1] and returns its logits [batch, 1, vocab].
    """
    cfg = self.config
    dtype = cfg.activation_dtype
    p = methods.input_positions(cfg)
    enc_valid = masks.encoder_key_mask(encoder_input_tokens, p, encoder_prompt_mask)
    relpos = _relpos(cfg, 'relpos_bias')
    # 'cache_index': t5x's name for a cache's scalar position, which beam search keeps.
    stepping = decode and self.has_variable('cache', 'cache_index')
    if stepping:
      # One new position: attend to the cached positions up to and including it.
      position = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      step = position.value
      position.value = step + 1
      self_mask = (jnp.arange(max_decode_length) <= step)[None, None, None, :]
      bias = jax.lax.dynamic_slice_in_dim(
        relpos(max_decode_length, max_decode_length, bidirectional=False), step, 1, axis=2
      )
      cross_mask = enc_valid[:, None, None, :]
    else:
      if decode:
        self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      dec_valid = decoder_target_tokens > 0
      self_mask = masks.attention_mask(
        dec_valid, dec_valid, decoder_segment_ids, decoder_segment_ids, causal=True
      )
      enc_segments = (
        None if encoder_segment_ids is None else masks.segments_with_prompt(encoder_segment_ids, p)
      )
      cross_mask = masks.attention_mask(
        dec_valid, enc_valid, decoder_segment_ids, enc_segments, jnp.arange(encoded.shape[1]) < p
      )
      length = decoder_input_tokens.shape[1]
      bias = relpos(length, length, bidirectional=False)
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    # Decoding one position at a time has no backward pass to save memory for.
    layer = _rematerialised(DecoderLayer, 'none' if decode else cfg.remat_policy, (6, 7))
    for i in range(cfg.num_decoder_layers):
      y = layer(cfg, self.cache_encoder_projections, name=f'layers_{i}')(
        y, encoded, self_mask, cross_mask, bias, deterministic, decode
      )
    y = layers.RMSNorm(dtype, name='decoder_norm')(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / np.sqrt(y.shape[-1])
    else:
      logits = layers.Dense(
        cfg.vocab_size,
        ('embed', 'vocab'),
        nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'),
        dtype,
        cfg,
        name='logits_dense',
      )(y, deterministic)
    return logits.astype(jnp.float32)


class Transformer(nn.Module):
  """The full encoder-decoder; call signature as t5x's `network.Transformer`."""

  config: T5Config
  cache_encoder_projections: bool = True

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder, self.cache_encoder_projections)

  def encode(
    self,
    encoder_input_tokens,
    encoder_segment_ids=None,
    enable_dropout=True,
    prompt=None,
    prompt_mask=None,
  ):
    return self.encoder(
      encoder_input_tokens, encoder_segment_ids, not enable_dropout, prompt, prompt_mask
    )

  def decode(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    enable_dropout=True,
    encoder_prompt_mask=None,
    decode=False,
    max_decode_length=None,
  ):
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      not enable_dropout,
      encoder_prompt_mask,
      decode,
      max_decode_length,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    enable_dropout: bool = True,
  ) -> Array:
    """Teacher-forced logits [batch, tgt_len, vocab] for token ids [batch, len].

    Positions are accepted for t5x compatibility; T5's relative attention only needs
    differences, which packing leaves unchanged inside a segment.
    """
    del encoder_positions, decoder_positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      enable_dropout,
    )
