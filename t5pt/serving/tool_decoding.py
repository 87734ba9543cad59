"""Decoding that runs the calls a model writes (Toolformer, Schick et al. 2023).

Rows decode until a call closes (Toolformer's syntax: the model has written
`[Name(argument) ->`), then stop. On the host the closed calls are parsed and run, all
rows' calls at once, each within its tool's limits (t5pt/tools/base.py: a failure is a
bounded error text, never an exception); each result is written in (` result]`) and
decoding goes on from there, the text so far forced as a prefix. The encoder runs once.

    decoded = decode_with_tools(model, params, encoder_tokens, vocabulary, max_length, use)

A stop is a candidate only (a token whose text ends like the arrow); the host confirms it
with the syntax, and a row whose arrow closes no call just goes on. Greedy and sampling;
beam search cannot stop rows one by one and is refused.
"""

import concurrent.futures
import dataclasses
import functools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5pt.model import decoding
from t5pt.model import models
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.tools import base
from t5pt.tools import syntax as syntax_lib

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix='t5pt-calls')


@dataclasses.dataclass(frozen=True)
class ToolUse:
  """tools: {name: Tool}; call_top_k: a call may start whenever the call-start token is
  among the k most likely (TOOL_CALL_TOP_K; 1: plain decoding, the paper used 10);
  max_calls: calls per row, after which its arrows are text."""

  tools: Mapping[str, base.Tool]
  syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER
  call_top_k: int = 1
  max_calls: int = 4


@dataclasses.dataclass
class Decoded:
  """One row: its tokens and text with the calls and their results, the text without the
  call spans, and each call as run."""

  tokens: list[int]
  text: str
  text_without_calls: str
  calls: list[base.CallResult]
  score: float


def _marker_tokens(vocabulary: seqio.Vocabulary, use: ToolUse) -> tuple[np.ndarray, int]:
  """(stops [vocab] bool: tokens whose text ends like the arrow, the call-start token id or
  -1 when the start marker is not one token)."""
  arrow = use.syntax.arrow
  size = vocabulary.vocab_size
  stops = np.array([vocabulary.decode([i]).endswith(arrow[-1]) for i in range(size)])
  start = vocabulary.encode(use.syntax.start)
  return stops, (start[-1] if len(start) == 1 else -1)


def decode_with_tools(
  model: models.EncoderDecoderModel,
  params,
  encoder_tokens: np.ndarray,
  vocabulary: seqio.Vocabulary,
  max_length: int,
  use: ToolUse,
  config: inference.DecodeConfig = inference.DecodeConfig(),
  prompt: Optional[jax.Array] = None,
  prompt_mask: Optional[jax.Array] = None,
) -> list[Decoded]:
  """Decodes encoder_tokens [rows, in_len] running the calls each row writes."""
  if config.method == 'beam' or config.num_decodes != 1:
    raise UserError(
      'Decoding with TOOLS runs one greedy or sampled decode per input: set '
      "inference.DecodeConfig.method = 'greedy' or 'sample' and num_decodes = 1."
    )
  rows = encoder_tokens.shape[0]
  stops, start = _marker_tokens(vocabulary, use)
  segment = _segment_fn(model, config, max_length, use.call_top_k if start >= 0 else 1, start)
  encoded = model.module.apply(
    {'params': params},
    encoder_tokens,
    None,
    False,
    prompt,
    prompt_mask,
    method=model.module.encode,
  )
  prefix = np.zeros((rows, max_length), np.int32)
  lengths = np.zeros((rows,), np.int32)
  calls: list[list[base.CallResult]] = [[] for _ in range(rows)]
  false_stops = np.zeros((rows,), np.int32)
  rng = jax.random.PRNGKey(config.seed)
  while True:
    may_call = np.array([len(c) < use.max_calls for c in calls]) & (false_stops < 8)
    rng, key = jax.random.split(rng)
    tokens, scores, stopped = jax.device_get(
      segment(
        params,
        encoded,
        jnp.asarray(encoder_tokens),
        prompt_mask,
        key,
        jnp.asarray(prefix),
        jnp.asarray(lengths),
        jnp.asarray(stops[None] & may_call[:, None]),
        jnp.asarray(may_call),
      )
    )
    pending = []
    for row in np.flatnonzero(stopped):
      written = _until_stop(tokens[row])
      call = syntax_lib.pending_call(vocabulary.decode(written), use.syntax)
      prefix[row, : len(written)], lengths[row] = written, len(written)
      if call is None:
        false_stops[row] += 1
      else:
        pending.append((row, call, written))
    if not stopped.any():
      break
    results = _POOL.map(lambda p: base.run_call(use.tools, p[1].name, p[1].argument), pending)
    for (row, _, written), result in zip(pending, results):
      calls[row].append(result)
      written = written + vocabulary.encode(syntax_lib.result_suffix(result.text, use.syntax))
      written = written[:max_length]
      prefix[row, : len(written)], lengths[row] = written, len(written)
  return [_decoded(vocabulary, tokens[r], float(scores[r]), calls[r], use) for r in range(rows)]


def _until_stop(row_tokens: np.ndarray) -> list[int]:
  """The row's tokens up to its last non-padding one."""
  nonzero = np.flatnonzero(row_tokens)
  return [int(t) for t in row_tokens[: nonzero[-1] + 1]] if nonzero.size else []


def _decoded(vocabulary, row_tokens, score, calls, use: ToolUse) -> Decoded:
  tokens = inference.until_eos(row_tokens)
  text = vocabulary.decode(tokens)
  return Decoded(tokens, text, syntax_lib.strip_calls(text, use.syntax), calls, score)


@functools.lru_cache(maxsize=8)
def _segment_fn(model, config: inference.DecodeConfig, max_length: int, top_k: int, start: int):
  """A jitted decode of every row from its forced prefix until EOS, the length, or a stop."""

  @jax.jit
  def segment(params, encoded, encoder_tokens, prompt_mask, rng, prefix, lengths, stops, may):
    state, step_fn = inference.step_functions(
      model, params, encoded, encoder_tokens, prompt_mask, max_length, config.use_cache
    )
    steering = decoding.Steering(prefix, lengths, stops, start, top_k, may)
    temperature = 0.0 if config.method == 'greedy' else config.temperature
    return decoding.sample(
      step_fn,
      state,
      encoded.shape[0],
      max_length,
      rng,
      inference.EOS_ID,
      temperature,
      config.top_k,
      config.top_p,
      steering,
    )

  return segment
