"""Attention masks of the T5 network: which positions are real (tokens, prompt positions),
packed segments (a prompt is shared by every segment), and causality. Masks are 0/1 float
arrays [batch, 1, q_len, kv_len] (1 = may attend)."""

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


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


def segments_with_prompt(segment_ids: Array, prompt_length: int) -> Array:
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
