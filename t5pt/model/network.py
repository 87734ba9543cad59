"""T5 1.1 / Flan-T5 (and T5 1.0) encoder-decoder in flax.linen, with a soft prompt.

Parameter names, shapes and logical axis names follow t5x's `examples/t5`, so T5X
checkpoints map onto this tree one to one:

    token_embedder/embedding                                  [vocab, embed]
    encoder/prompt/prompt                                     [prompt, embed]   (prompt_length > 0)
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

Added by a tuning method (see adapters.py, quantization.py), next to the kernel they adapt:

    .../<dense>/lora_a                                        [in, lora_rank]  (lora_rules)
    .../<dense>/lora_b                                        [lora_rank, out]
    .../<dense>/ia3_scale                                     [in] or [out]    (ia3_pattern)
    .../<attention>/prefix_key, prefix_value                  [prompt, joined_kv]
                                          (prefix_length, decoder_prefix_length: deep prompts)
    .../<dense>/kernel_scale                                  [out]   (int8_kernels: kernel int8)

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
from t5pt.model import adapters as adapters_lib
from t5pt.model import layers
from t5pt.model import prompts
from t5pt.runtime.errors import UserError

Array = jax.Array

PROMPT_PATH = 'encoder/prompt/prompt'
EMBEDDING_PATH = 'token_embedder/embedding'
LOGITS_PATH = 'decoder/logits_dense/kernel'


def is_added_by_tuning(path: str) -> bool:
  """Whether a parameter exists only for tuning (prompt, adapters), not in a base model."""
  return path == PROMPT_PATH or adapters_lib.is_adapter(path)


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
  lora_rules: Sequence = ()  # (kernel path regex, rank, alpha); see adapters.py
  lora_dropout: float = 0.0
  ia3_pattern: Optional[str] = None  # kernel path regex for IA3 scales
  prefix_length: int = 0  # deep prompts: per-layer key/value prefixes, encoder
  decoder_prefix_length: int = 0  # ... and decoder self- and cross-attention
  int8_kernels: bool = False  # dense kernels int8 + kernel_scale; see quantization.py
  remat_policy: str = 'none'  # what a layer keeps for the backward pass: REMAT_POLICIES

  def __post_init__(self):
    # gin and JSON give lists; the config must stay hashable.
    rules = tuple(tuple(rule) for rule in self.lora_rules)
    object.__setattr__(self, 'lora_rules', rules)
    if self.mlp_activations is not None:
      object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))

  @property
  def adapters(self) -> adapters_lib.AdapterConfig:
    return adapters_lib.AdapterConfig(self.lora_rules, self.lora_dropout, self.ia3_pattern)

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  def tuned_parameters(self) -> tuple[str, ...]:
    """Regexes of the parameters the tuning method adds (prompt, LoRA factors, IA3 scales,
    deep-prompt prefixes): what trains when TRAINABLE is not set."""
    patterns = []
    if self.prompt_length:
      patterns.append(PROMPT_PATH)
    if self.lora_rules:
      patterns.append(f'.*/({adapters_lib.LORA_A}|{adapters_lib.LORA_B})')
    if self.ia3_pattern:
      patterns.append(f'.*/{adapters_lib.IA3_SCALE}')
    if self.prefix_length or self.decoder_prefix_length:
      patterns.append(f'.*/({adapters_lib.PREFIX_KEY}|{adapters_lib.PREFIX_VALUE})')
    return tuple(patterns)

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


def _mlp(cfg: T5Config, dtype) -> layers.MlpBlock:
  """The MLP block of an encoder or decoder layer."""
  return layers.MlpBlock(
    cfg.mlp_dim,
    cfg.mlp_activations,
    cfg.dropout_rate,
    dtype,
    cfg.adapters,
    cfg.int8_kernels,
    name='mlp',
  )


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = layers.RMSNorm(dtype, name='pre_attention_layer_norm')(x)
    y = layers.MultiHeadAttention(
      cfg.num_heads,
      cfg.head_dim,
      cfg.dropout_rate,
      dtype,
      cfg.adapters,
      cfg.prefix_length,
      cfg.int8_kernels,
      name='attention',
    )(y, y, mask, bias, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(cfg, dtype)(y, deterministic)
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
      layers.MultiHeadAttention,
      cfg.num_heads,
      cfg.head_dim,
      cfg.dropout_rate,
      dtype,
      cfg.adapters,
      cfg.decoder_prefix_length,
      cfg.int8_kernels,
    )
    y = layers.RMSNorm(dtype, name='pre_self_attention_layer_norm')(x)
    y = attention(name='self_attention')(
      y, y, self_mask, bias, deterministic, 'self' if decode else None
    )
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype, name='pre_cross_attention_layer_norm')(x)
    y = attention(name='encoder_decoder_attention')(
      y, encoded, cross_mask, None, deterministic, self._cross_decode(decode)
    )
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(cfg, dtype)(y, deterministic)
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


def encoder_key_mask(
  encoder_input_tokens: Array, prompt_length: int, prompt_mask: Optional[Array] = None
) -> Array:
  """Which encoder positions are real (prompt or non-padding token): [batch, P + length].

  `prompt_mask` [batch, P] marks the real positions of per-example prompts that are
  left-padded to a common length P; by default every prompt position is real.
  """
  batch = encoder_input_tokens.shape[0]
  if prompt_mask is None:
    prompt_mask = jnp.ones((batch, prompt_length), bool)
  return jnp.concatenate([prompt_mask.astype(bool), encoder_input_tokens > 0], axis=1)


def _segments_with_prompt(segment_ids: Array, prompt_length: int) -> Array:
  """Prompt positions get segment 0 (shared by every packed example): [batch, P + length]."""
  batch = segment_ids.shape[0]
  return jnp.concatenate(
    [jnp.zeros((batch, prompt_length), segment_ids.dtype), segment_ids], axis=1
  )


def attention_mask(
  query_valid: Array,
  key_valid: Array,
  query_segments: Optional[Array] = None,
  key_segments: Optional[Array] = None,
  key_is_prompt: Optional[Array] = None,
  causal: bool = False,
) -> Array:
  """Builds a [batch, 1, q_len, kv_len] 0/1 mask.

  Packed batches (segment ids given) attend within their own segment; keys flagged by
  `key_is_prompt` [kv_len] are visible to every segment.
  """
  mask = query_valid[:, :, None] & key_valid[:, None, :]
  if query_segments is not None:
    same = query_segments[:, :, None] == key_segments[:, None, :]
    if key_is_prompt is not None:
      same = same | key_is_prompt[None, None, :]
    mask = mask & same
  if causal:
    q_len, k_len = mask.shape[1:]
    mask = mask & jnp.tril(jnp.ones((q_len, k_len), bool))[None]
  return mask[:, None].astype(jnp.float32)


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
    p = cfg.prompt_length
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    if p:
      x = prompts.Prompt(p, cfg.emb_dim, name='prompt')(x, prompt)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    valid = encoder_key_mask(encoder_input_tokens, p, prompt_mask)
    segments = (
      None if encoder_segment_ids is None else _segments_with_prompt(encoder_segment_ids, p)
    )
    is_prompt = jnp.arange(x.shape[1]) < p
    mask = attention_mask(valid, valid, segments, segments, is_prompt)
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
    p = cfg.prompt_length
    enc_valid = encoder_key_mask(encoder_input_tokens, p, encoder_prompt_mask)
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
      self_mask = attention_mask(
        dec_valid, dec_valid, decoder_segment_ids, decoder_segment_ids, causal=True
      )
      enc_segments = (
        None if encoder_segment_ids is None else _segments_with_prompt(encoder_segment_ids, p)
      )
      cross_mask = attention_mask(
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
        cfg.adapters,
        cfg.int8_kernels,
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
