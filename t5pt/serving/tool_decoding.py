"""Decoding that runs the calls a model writes (Toolformer, Schick et al. 2023).

All rows decode in step until one closes a call (Toolformer's syntax: the model has
written `[Name(argument) ->`); then decoding pauses, every row where it is. On the host the
closed calls are parsed and run, all at once, each within its tool's limits
(t5pt/tools/base.py: a failure is a bounded error text, never an exception); each result
(` result]`) is queued as tokens forced into its row, and decoding resumes from the same
key/value cache: nothing decoded is decoded again, the encoder runs once, and while a row
takes in its result the others go on writing.

On several hosts every process decodes the same rows (the batch is one global array);
process 0 alone runs the host tools and hands their results to the others, so every
process forces the same text even when a tool's timing differs. A tool that is a trained
model (`batched`, e.g. serving/run_tool.py) runs on every process, as JAX needs.

    decoded = decode_with_tools(model, params, encoder_tokens, vocabulary, max_length, use)

A stop is a candidate only (a token whose text ends like the arrow); the host confirms it
with the syntax, and a row whose arrow closes no call just goes on. Greedy and sampling;
beam search cannot stop rows one by one and is refused.

The inline style (`style='inline'`, Toolformer-style Alpaca sets: `Calculator('2+3')`
inside an answer) decodes without pauses; each call is then run and replaced by its
result in the text a reader sees (`text_without_calls`).
"""

import dataclasses
import functools
from typing import Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from t5pt.model import decoding
from t5pt.model import models
from t5pt.runtime import checks
from t5pt.runtime import distributed
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.tools import base
from t5pt.tools import registry
from t5pt.tools import syntax as syntax_lib


@dataclasses.dataclass(frozen=True)
class ToolUse:
  """tools: {name: Tool}; call_top_k: a call may start whenever the call-start token is
  among the k most likely (TOOL_CALL_TOP_K; 1: plain decoding, the paper used 10);
  max_calls: calls per row, after which its arrows are text."""

  tools: Mapping[str, base.Tool]
  syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER
  call_top_k: int = 1
  max_calls: int = 4
  inline: bool = False

  @classmethod
  def from_settings(
    cls,
    tools,
    call_top_k,
    max_calls,
    decode: inference.DecodeConfig,
    configurable: str,
    syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER,
    style: str = 'toolformer',
  ) -> Optional['ToolUse']:
    """TOOLS, TOOL_CALL_TOP_K, MAX_TOOL_CALLS, TOOL_SYNTAX and TOOL_CALL_STYLE as
    `configurable` (e.g. 'batch_inference.infer') takes them, checked before anything
    loads; None without TOOLS."""
    if tools is None:
      return None
    tools = registry.check_tools(tools)
    checks.integer(call_top_k, f'TOOL_CALL_TOP_K ({configurable}.tool_call_top_k)', 1)
    checks.integer(max_calls, f'MAX_TOOL_CALLS ({configurable}.max_tool_calls)', 0)
    if not isinstance(syntax, syntax_lib.CallSyntax):
      raise UserError(
        f'TOOL_SYNTAX ({configurable}.tool_syntax) = {syntax!r}: expected '
        "@tools.CallSyntax(), e.g. with tools.CallSyntax.start = '['."
      )
    if style not in ('toolformer', 'inline'):
      raise UserError(
        f"TOOL_CALL_STYLE ({configurable}.tool_call_style) = {style!r}: use 'toolformer' "
        "([Name(argument) -> result], run as the model writes) or 'inline' (Name('argument') "
        'in the answer, replaced by its result after decoding).'
      )
    if decode.method == 'beam' or decode.num_decodes != 1:
      raise UserError(
        "TOOLS runs one greedy or sampled decode per input: set DECODE's method to 'greedy' "
        "or 'sample' and num_decodes = 1 (inference.DecodeConfig)."
      )
    return cls(tools, syntax, call_top_k, max_calls, style == 'inline')


@dataclasses.dataclass
class Decoded:
  """One row: its tokens and text with the calls and their results, the text without the
  call spans, and each call as run."""

  tokens: list[int]
  text: str
  text_without_calls: str
  calls: list[base.CallResult]
  score: float


_MARKERS: dict = {}  # (id(vocabulary), syntax) -> (vocabulary, markers): a scan is slow


def _marker_tokens(vocabulary: seqio.Vocabulary, use: ToolUse) -> tuple[np.ndarray, int]:
  """(stops [vocab] bool: tokens whose text ends like the arrow, the call-start token id or
  -1 when the start marker is not one token). Scanned once per vocabulary."""
  key = (id(vocabulary), use.syntax)
  if key not in _MARKERS:  # The vocabulary is kept with it, so its id is not reused.
    arrow = use.syntax.arrow
    size = vocabulary.vocab_size
    stops = np.array([vocabulary.decode([i]).endswith(arrow[-1]) for i in range(size)])
    start = vocabulary.encode(use.syntax.start)
    _MARKERS[key] = (vocabulary, (stops, start[-1] if len(start) == 1 else -1))
  return _MARKERS[key][1]


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
  fns = _decode_fns(model, config, max_length, use.call_top_k if start >= 0 else 1, start)
  encoded = fns.encode(params, encoder_tokens, prompt, prompt_mask)
  forced = np.zeros((rows, max_length), np.int32)
  forced_until = np.zeros((rows,), np.int32)
  calls: list[list[base.CallResult]] = [[] for _ in range(rows)]
  false_stops = np.zeros((rows,), np.int32)
  progress = fns.begin(params, encoded, encoder_tokens, prompt_mask, config.seed)
  while True:
    may_call = np.array([len(c) < use.max_calls for c in calls]) & (false_stops < 8)
    may_call &= not use.inline
    steering = _like_rows(
      encoder_tokens,
      forced=forced,
      forced_until=forced_until,
      stops=stops[None] & may_call[:, None],
      may_call=may_call,
    )
    progress = fns.resume(params, encoded, encoder_tokens, prompt_mask, progress, **steering)
    index, tokens, paused = distributed.fetch((progress.index, progress.tokens, progress.paused))
    if not paused.any():
      break
    pending = []
    for row in np.flatnonzero(paused):
      call = syntax_lib.pending_call(vocabulary.decode(_written(tokens[row])), use.syntax)
      if call is None:
        false_stops[row] += 1  # An arrow outside a call: the row just goes on.
      else:
        pending.append((row, call))
    results = run_calls(use.tools, [(call.name, call.argument) for _, call in pending])
    for (row, _), result in zip(pending, results):
      calls[row].append(result)
      suffix = vocabulary.encode(syntax_lib.result_suffix(result.text, use.syntax))
      suffix = suffix[: max_length - int(index)]
      forced[row, index : index + len(suffix)] = suffix
      forced_until[row] = index + len(suffix)
  scores = distributed.fetch(progress.scores)
  if use.inline:
    return _with_inline_calls(vocabulary, tokens, scores, use)
  return [_decoded(vocabulary, tokens[r], float(scores[r]), calls[r], use) for r in range(rows)]


def _with_inline_calls(vocabulary, tokens, scores, use: ToolUse) -> list[Decoded]:
  """Each row's inline calls (at most max_calls) run, all rows' at once, and replaced by
  their results in text_without_calls."""
  texts = [vocabulary.decode(inference.until_eos(row)) for row in tokens]
  found = [syntax_lib.find_inline_calls(text, use.tools)[: use.max_calls] for text in texts]
  flat = [(call.name, call.argument) for row in found for call in row]
  results = iter(run_calls(use.tools, flat))
  decoded = []
  for row, (text, row_calls) in enumerate(zip(texts, found)):
    ran = [next(results) for _ in row_calls]
    pieces, position = [], 0
    for call, result in zip(row_calls, ran):
      pieces += [text[position : call.start], result.text]
      position = call.end
    replaced = ''.join(pieces) + text[position:]
    decoded.append(
      Decoded(inference.until_eos(tokens[row]), text, replaced, ran, float(scores[row]))
    )
  return decoded


def run_calls(tools, calls: list[tuple[str, str]]) -> list[base.CallResult]:
  """Each (tool name, argument) run, the same results on every process: host tools run on
  process 0 and are handed to the others; batched tools (models) run on every process."""
  on_all = [i for i, (name, _) in enumerate(calls) if base.is_batched(tools, name)]
  on_first = [i for i in range(len(calls)) if i not in on_all]
  results: list = [None] * len(calls)
  first = []
  if distributed.is_writer():
    first = [r.to_json() for r in base.run_calls(tools, [calls[i] for i in on_first])]
  for i, result in zip(on_first, distributed.from_first_process(first)):
    results[i] = base.CallResult(**result)
  for i, result in zip(on_all, base.run_calls(tools, [calls[i] for i in on_all])):
    results[i] = result
  return results


def _like_rows(encoder_tokens, **arrays) -> dict:
  """Host arrays [rows, ...] placed as the batch's rows are (one global array on several
  hosts), so that the jitted segment takes them whatever the mesh."""
  sharding = getattr(encoder_tokens, 'sharding', None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return partitioning.place_batch(arrays, sharding)
  return {name: jnp.asarray(value) for name, value in arrays.items()}


def _written(row_tokens: np.ndarray) -> list[int]:
  """The row's tokens up to its last non-padding one."""
  nonzero = np.flatnonzero(row_tokens)
  return [int(t) for t in row_tokens[: nonzero[-1] + 1]] if nonzero.size else []


def _decoded(vocabulary, row_tokens, score, calls, use: ToolUse) -> Decoded:
  tokens = inference.until_eos(row_tokens)
  text = vocabulary.decode(tokens)
  return Decoded(tokens, text, syntax_lib.strip_calls(text, use.syntax), calls, score)


class _DecodeFns(NamedTuple):
  encode: Callable
  begin: Callable
  resume: Callable


@functools.lru_cache(maxsize=8)
def _decode_fns(model, config: inference.DecodeConfig, max_length: int, top_k: int, start: int):
  """Jitted: the encoder; the empty progress (a fresh cache); sampling on from a progress
  under the steering until a row stops, every row ends, or the length runs out."""

  @jax.jit
  def encode(params, encoder_tokens, prompt, prompt_mask):
    return model.module.apply(
      {'params': params},
      encoder_tokens,
      None,
      False,
      prompt,
      prompt_mask,
      method=model.module.encode,
    )

  def steps(params, encoded, encoder_tokens, prompt_mask):
    return inference.step_functions(
      model, params, encoded, encoder_tokens, prompt_mask, max_length, config.use_cache
    )

  @jax.jit
  def begin(params, encoded, encoder_tokens, prompt_mask, seed):
    state, _ = steps(params, encoded, encoder_tokens, prompt_mask)
    return decoding.begin(state, encoded.shape[0], max_length, jax.random.PRNGKey(seed))

  # The progress (its cache) is donated: a resume updates it in place, not in a copy.
  @functools.partial(jax.jit, donate_argnames='progress')
  def resume(params, encoded, encoder_tokens, prompt_mask, progress, **steering):
    _, step_fn = steps(params, encoded, encoder_tokens, prompt_mask)  # the cache: progress's
    temperature = 0.0 if config.method == 'greedy' else config.temperature
    steer = decoding.Steering(
      steering['forced'],
      steering['forced_until'],
      steering['stops'],
      start,
      top_k,
      steering['may_call'],
    )
    return decoding.resume(
      step_fn, progress, inference.EOS_ID, temperature, config.top_k, config.top_p, steer
    )

  return _DecodeFns(encode, begin, resume)
