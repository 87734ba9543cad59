"""Decoding algorithms over a step function: greedy, temperature sampling, beam search.

The algorithms know nothing about T5. They drive

    step_fn(tokens [rows], index, state) -> (logits [rows, vocab] float32, state)

which feeds `tokens` as the decoder input at position `index` (0 is the start token)
and returns the next-token logits; `state` is the model's key/value cache (or, without a
cache, the decoder inputs so far). Every leaf of `state` whose leading dimension is
`rows` is one row per sequence, which is how beam search reorders it.

Returned token arrays hold the generated tokens only (no start token), 0 after EOS.
Scores are log-likelihoods under the model (temperature 1), summed over the generated
tokens including EOS; beam search divides them by t5x's brevity penalty
((5 + length) / 6) ** alpha.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

State = Any
StepFn = Callable[[jax.Array, jax.Array, State], tuple[jax.Array, State]]
NEG_INF = -1.0e10  # A logit no token can win with; also the attention mask (network).
PAD_ID = 0


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Keeps the `top_k` most likely tokens and the smallest set whose probability reaches
  `top_p` (nucleus); the rest get NEG_INF. logits [rows, vocab]."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the more likely tokens.
    sorted_logits = jnp.where(before > top_p, NEG_INF, sorted_logits)
    logits = jnp.take_along_axis(sorted_logits, jnp.argsort(order, axis=-1), axis=-1)
  return logits


@dataclasses.dataclass(frozen=True)
class Steering:
  """What a caller can impose on sampling, row by row (decoding with tools uses all three).

  forced [rows, max_length], forced_until [rows]: a row is given forced[row, i] at every
    position i < forced_until[row] (a tool's result written in); their scores are not
    counted.
  stops [rows, vocab] bool: once a row chooses such a token (a call's arrow), decoding
    pauses, every row where it is, with `paused` saying which rows stopped; forced tokens
    never stop a row. `resume` goes on from there.
  trigger, trigger_k, may_trigger [rows]: where token `trigger` is among the `trigger_k`
    most likely, a row that may is given it (Toolformer's call start).
  """

  forced: jax.Array
  forced_until: jax.Array
  stops: Optional[jax.Array] = None
  trigger: int = -1
  trigger_k: int = 1
  may_trigger: Optional[jax.Array] = None


class Progress(NamedTuple):
  """Sampling so far: every row is at position `index` (the next one to decode), having
  chosen `current` last. tokens [rows, max_length], ended / paused [rows] bool, scores
  [rows], the model's `state` (its cache) and the random key."""

  index: jax.Array
  tokens: jax.Array
  current: jax.Array
  ended: jax.Array
  paused: jax.Array
  scores: jax.Array
  state: State
  rng: jax.Array


def begin(state: State, rows: int, max_length: int, rng: jax.Array) -> Progress:
  """Nothing decoded yet: position 0, fed the start token."""
  false = jnp.zeros((rows,), bool)
  return Progress(
    jnp.zeros((), jnp.int32),
    jnp.zeros((rows, max_length), jnp.int32),
    jnp.full((rows,), PAD_ID, jnp.int32),
    false,
    false,
    jnp.zeros((rows,), jnp.float32),
    state,
    rng,
  )


def sample(
  step_fn: StepFn,
  state: State,
  rows: int,
  max_length: int,
  rng: jax.Array,
  eos_id: int = 1,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Greedy (temperature 0) or temperature sampling with optional top-k / top-p.

  Returns tokens [rows, max_length] and scores [rows]. Stops early once every row has
  ended."""
  done = resume(step_fn, begin(state, rows, max_length, rng), eos_id, temperature, top_k, top_p)
  return done.tokens, done.scores


def resume(
  step_fn: StepFn,
  progress: Progress,
  eos_id: int = 1,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  steering: Optional[Steering] = None,
) -> Progress:
  """Samples on from `progress` until every row has ended, the length runs out, or (with
  `steering`'s stops) a row stops: rows already ended stay so, nothing is decoded again."""
  rows, max_length = progress.tokens.shape
  if steering is None:
    steering = Steering(progress.tokens, jnp.zeros((rows,), jnp.int32))

  def cond(p: Progress):
    return (p.index < max_length) & ~p.ended.all() & ~p.paused.any()

  def body(p: Progress) -> Progress:
    logits, state = step_fn(p.current, p.index, p.state)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    rng, key = jax.random.split(p.rng)
    if temperature == 0.0:
      chosen = jnp.argmax(logits, axis=-1)
    else:
      chosen = jax.random.categorical(
        key, filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
      )
    if steering.trigger >= 0 and steering.trigger_k > 1:
      kth = jax.lax.top_k(logits, steering.trigger_k)[0][:, -1]
      fire = (logits[:, steering.trigger] >= kth) & steering.may_trigger
      chosen = jnp.where(fire, steering.trigger, chosen)
    forced = p.index < steering.forced_until
    chosen = jnp.where(forced, steering.forced[:, p.index], chosen)
    chosen = jnp.where(p.ended, PAD_ID, chosen).astype(jnp.int32)
    scores = p.scores + jnp.where(
      p.ended | forced, 0.0, jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
    )
    tokens = jax.lax.dynamic_update_slice_in_dim(p.tokens, chosen[:, None], p.index, axis=1)
    paused = p.paused
    if steering.stops is not None:
      paused = ~p.ended & ~forced & jnp.take_along_axis(steering.stops, chosen[:, None], 1)[:, 0]
    ended = p.ended | (chosen == eos_id)
    return Progress(p.index + 1, tokens, chosen, ended, paused, scores, state, rng)

  return jax.lax.while_loop(cond, body, progress._replace(paused=jnp.zeros((rows,), bool)))


def brevity_penalty(alpha: float, length) -> jax.Array:
  """t5x's length normalisation: scores are divided by ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _reorder(state: State, rows: jax.Array, num_rows: int) -> State:
  """Gathers every per-row leaf of `state` by `rows` [num_rows]."""
  return jax.tree.map(lambda x: x[rows] if x.ndim and x.shape[0] == num_rows else x, state)


def beam_search(
  step_fn: StepFn,
  state: State,
  batch_size: int,
  beam_size: int,
  max_length: int,
  eos_id: int = 1,
  alpha: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
  """Beam search with t5x's brevity penalty: keeps `beam_size` live and `beam_size`
  finished hypotheses per example; stops when no live one can beat the worst finished.

  `state` has batch_size * beam_size rows (each example repeated beam_size times).
  Returns tokens [batch, beam, max_length] and length-normalised scores [batch, beam],
  best first.
  """
  b, k, n = batch_size, beam_size, batch_size * beam_size
  best_possible = brevity_penalty(alpha, max_length)

  def cond(carry):
    index, _, alive_scores, _, finished_scores, finished, _ = carry
    worst_finished = jnp.where(finished, finished_scores, NEG_INF).min(axis=1)
    best_alive = alive_scores[:, 0] / best_possible
    return (index < max_length) & ~(worst_finished > best_alive).all()

  def body(carry):
    index, alive, alive_scores, finished_seqs, finished_scores, finished, state = carry
    previous = jax.lax.dynamic_index_in_dim(
      alive, jnp.maximum(index - 1, 0), axis=2, keepdims=False
    )
    current = jnp.where(index == 0, PAD_ID, previous).reshape(n)
    logits, state = step_fn(current, index, state)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    candidates = (alive_scores[:, :, None] + log_probs).reshape(b, k * vocab)
    top_scores, top_index = jax.lax.top_k(candidates, 2 * k)
    source_beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(alive, source_beam[:, :, None], axis=1)
    top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, token[:, :, None], index, axis=2)
    is_eos = token == eos_id

    alive_scores, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    alive = jnp.take_along_axis(top_seqs, keep[:, :, None], axis=1)
    rows = (jnp.arange(b)[:, None] * k + jnp.take_along_axis(source_beam, keep, axis=1)).reshape(n)
    state = _reorder(state, rows, n)

    # As in HF's beam scorer, a hypothesis ends only if its EOS ranks among the top k
    # candidates (so beam size 1 is exactly greedy); at max_length every candidate ends.
    ranked_in_beam = jnp.arange(2 * k)[None, :] < k
    ends_here = (is_eos & ranked_in_beam) | (index == max_length - 1)
    new_scores = jnp.where(ends_here, top_scores / brevity_penalty(alpha, index + 1), NEG_INF)
    pooled_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    finished_scores, pick = jax.lax.top_k(pooled_scores, k)
    finished_seqs = jnp.take_along_axis(
      jnp.concatenate([finished_seqs, top_seqs], axis=1), pick[:, :, None], axis=1
    )
    finished = jnp.take_along_axis(jnp.concatenate([finished, ends_here], axis=1), pick, axis=1)
    return index + 1, alive, alive_scores, finished_seqs, finished_scores, finished, state

  first_beam_only = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  carry = (
    jnp.zeros((), jnp.int32),
    jnp.zeros((b, k, max_length), jnp.int32),
    first_beam_only,
    jnp.zeros((b, k, max_length), jnp.int32),
    jnp.full((b, k), NEG_INF, jnp.float32),
    jnp.zeros((b, k), bool),
    state,
  )
  _, _, _, finished_seqs, finished_scores, _, _ = jax.lax.while_loop(cond, body, carry)
  return finished_seqs, finished_scores
