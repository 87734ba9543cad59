"""Batch inference on the T5 network: decoding, scoring, rank classification, and
per-example prompts.

    predict_batch   encoder once (with its prompt), then greedy / sampling / beam search
                    through decoding.py, with the decoder's key/value cache (or without,
                    recomputing the decoder over the prefix each step, for comparison)
    score_batch     log-likelihood of given targets per example (t5x's score_batch)
    rank_classify   picks, per input, the candidate target with the highest likelihood
    stack_prompts   several trained prompts -> per-example prompts for one batch

All functions take the full nested parameter tree (frozen base merged with the trained
part) and are jit-compatible; they run under whatever sharding the params and batch carry.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gin
from t5pt.model import decoding
from t5pt.model import models
from t5pt.runtime.errors import UserError

Array = jax.Array
EOS_ID = 1


@gin.configurable(module='inference')
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode. method: 'greedy', 'sample' (temperature, top_k, top_p) or 'beam'
  (num_decodes beams, brevity penalty alpha as in t5x)."""

  method: str = 'greedy'
  num_decodes: int = 1
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  alpha: float = 0.6
  use_cache: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.method not in ('greedy', 'sample', 'beam'):
      raise UserError(
        f"inference.DecodeConfig.method={self.method!r}: use 'greedy', 'sample' or 'beam'."
      )
    if self.method == 'greedy' and self.num_decodes != 1:
      raise UserError(
        'Greedy decoding gives one decode per example; use '
        "method='sample' or 'beam' for num_decodes > 1."
      )


def step_functions(
  model: models.EncoderDecoderModel,
  params,
  encoded: Array,
  encoder_tokens: Array,
  prompt_mask: Optional[Array],
  max_length: int,
  use_cache: bool,
):
  """(initial state, step_fn) for decoding.py over `encoded` [rows, enc_len, embed]."""
  rows = encoded.shape[0]
  apply = functools.partial(
    model.module.apply,
    method=model.module.decode,
    enable_dropout=False,
    encoder_prompt_mask=prompt_mask,
  )
  full = jnp.ones((rows, max_length), jnp.int32)
  if use_cache:
    # The first decode=True call (full length) creates the cache; its logits are unused.
    _, variables = apply(
      {'params': params},
      encoded,
      encoder_tokens,
      full,
      full,
      decode=True,
      max_decode_length=max_length,
      mutable=['cache'],
    )

    def step_with_cache(tokens, index, cache):
      del index  # The cache keeps its own position.
      logits, variables = apply(
        {'params': params, 'cache': cache},
        encoded,
        encoder_tokens,
        tokens[:, None],
        jnp.ones((rows, 1), jnp.int32),
        decode=True,
        max_decode_length=max_length,
        mutable=['cache'],
      )
      return logits[:, 0], variables['cache']

    return variables['cache'], step_with_cache

  def step_without_cache(tokens, index, decoder_inputs):
    decoder_inputs = jax.lax.dynamic_update_slice_in_dim(
      decoder_inputs, tokens[:, None], index, axis=1
    )
    logits = apply({'params': params}, encoded, encoder_tokens, decoder_inputs, full)
    return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), decoder_inputs

  return jnp.zeros((rows, max_length), jnp.int32), step_without_cache


def predict_batch(
  model: models.EncoderDecoderModel,
  params,
  encoder_tokens: Array,
  max_length: int,
  config: DecodeConfig = DecodeConfig(),
  prompt: Optional[Array] = None,
  prompt_mask: Optional[Array] = None,
) -> tuple[Array, Array]:
  """Decodes encoder_tokens [batch, in_len] (prompt positions are added by the network).

  `prompt` [batch, P, embed] / `prompt_mask` [batch, P] give each example its own prompt
  (see stack_prompts). Returns tokens [batch, num_decodes, max_length] and scores
  [batch, num_decodes], best first.
  """
  batch = encoder_tokens.shape[0]
  encoded = model.module.apply(
    {'params': params}, encoder_tokens, None, False, prompt, prompt_mask, method=model.module.encode
  )
  n = config.num_decodes
  repeat = lambda x: None if x is None else jnp.repeat(x, n, axis=0)
  encoded, tokens_in, mask = repeat(encoded), repeat(encoder_tokens), repeat(prompt_mask)
  state, step_fn = step_functions(
    model, params, encoded, tokens_in, mask, max_length, config.use_cache
  )
  if config.method == 'beam':
    return decoding.beam_search(step_fn, state, batch, n, max_length, EOS_ID, config.alpha)
  temperature = 0.0 if config.method == 'greedy' else config.temperature
  tokens, scores = decoding.sample(
    step_fn,
    state,
    batch * n,
    max_length,
    jax.random.PRNGKey(config.seed),
    EOS_ID,
    temperature,
    config.top_k,
    config.top_p,
  )
  tokens, scores = tokens.reshape(batch, n, max_length), scores.reshape(batch, n)
  order = jnp.argsort(-scores, axis=1)
  return (
    jnp.take_along_axis(tokens, order[:, :, None], axis=1),
    jnp.take_along_axis(scores, order, axis=1),
  )


def score_batch(
  model: models.EncoderDecoderModel,
  params,
  batch,
  prompt: Optional[Array] = None,
  prompt_mask: Optional[Array] = None,
) -> Array:
  """Sum of log p(target token) over each example's targets: [batch]. `prompt` /
  `prompt_mask` as in predict_batch."""
  if prompt is None:
    logits = model.logits(params, batch)
  else:
    encoded = model.module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      None,
      False,
      prompt,
      prompt_mask,
      method=model.module.encode,
    )
    logits = model.module.apply(
      {'params': params},
      encoded,
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      enable_dropout=False,
      encoder_prompt_mask=prompt_mask,
      method=model.module.decode,
    )
  targets = batch['decoder_target_tokens']
  log_probs = jax.nn.log_softmax(logits)
  token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return (token_scores * (targets > 0)).sum(axis=-1)


def _pad(rows: Sequence[Sequence[int]], length: int, what: str) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise UserError(
        f'{what} {i} has {len(row)} tokens but only {length} fit; raise '
        'TASK_FEATURE_LENGTHS or shorten it.'
      )
    out[i, : len(row)] = row
  return out


def rank_classify(
  model: models.EncoderDecoderModel,
  params,
  vocabulary,
  inputs: Sequence[str],
  options: Sequence[str],
  input_length: int,
  target_length: int,
  batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """Scores every (input, option) pair; returns (best option index [n_inputs],
  log-likelihoods [n_inputs, n_options]). `input_length` excludes the prompt."""
  encode = lambda text: list(vocabulary.encode(text)) + [EOS_ID]
  input_ids = [encode(x) for x in inputs]
  option_ids = [encode(o) for o in options]
  pairs = [(i, o) for i in range(len(inputs)) for o in range(len(options))]
  scorer = jax.jit(functools.partial(score_batch, model))
  scores = np.zeros(len(pairs), np.float32)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start : start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # One compiled shape.
    targets = _pad([option_ids[o] for _, o in chunk], target_length, 'Option')
    batch = {
      'encoder_input_tokens': _pad([input_ids[i] for i, _ in chunk], input_length, 'Input'),
      'decoder_target_tokens': targets,
      'decoder_input_tokens': np.concatenate(
        [np.zeros((len(chunk), 1), np.int32), targets[:, :-1]], axis=1
      ),
    }
    result = np.asarray(scorer(params, batch))
    end = min(start + batch_size, len(pairs))
    scores[start:end] = result[: end - start]
  scores = scores.reshape(len(inputs), len(options))
  return scores.argmax(axis=1), scores


def until_eos(tokens) -> list[int]:
  """A decoded row [max_length] as a list of ids up to (without) its first EOS."""
  out = []
  for t in np.asarray(tokens).tolist():
    if t == EOS_ID:
      break
    out.append(t)
  return out


def stack_prompts(prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Trained prompts [P_i, embed] -> (stacked [n, P_max, embed], mask [n, P_max]).

  Shorter prompts are padded on the left, so each prompt keeps the same relative
  distance to the input tokens as when it runs alone: an example decoded with prompt i
  from the stack gives the same output as with prompt i as the model's only prompt. Use
  T5Config(prompt_length=P_max) and index both arrays by each example's prompt id.
  """
  if not prompts:
    raise UserError('stack_prompts needs at least one prompt.')
  widths = {p.shape[1] for p in prompts}
  if len(widths) != 1:
    raise UserError(f'Prompts of different widths {sorted(widths)} cannot share a model.')
  longest = max(p.shape[0] for p in prompts)
  stacked = np.zeros((len(prompts), longest, widths.pop()), np.float32)
  mask = np.zeros((len(prompts), longest), bool)
  for i, p in enumerate(prompts):
    stacked[i, longest - p.shape[0] :] = p
    mask[i, longest - p.shape[0] :] = True
  return stacked, mask
