"""What a tool is, and one call of it run into a bounded result that never raises.

A tool is a text-to-text function: `tool(argument) -> result`. It raises ToolError for a
failure worth showing to the model (bad arithmetic, an unknown passage); anything else it
raises, a time-out, or a result over the length cap becomes a bounded error text too, and
the call's record says which.
"""

import concurrent.futures
import dataclasses
import time
from typing import Optional, Sequence

# A tool that hangs cannot be stopped from inside this process (only the sandbox's
# process can be killed); its thread is left to finish while decoding goes on.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix='t5pt-tool')
# Waits on _POOL's calls, so it must not share its threads (a full pool would deadlock).
_CALLERS = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix='t5pt-call')


class ToolError(Exception):
  """A failure the model may read: the message becomes the call's result."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """timeout_s: wall-clock seconds per call; max_result_chars: the longest result kept."""

  timeout_s: float = 5.0
  max_result_chars: int = 400


class Tool:
  """A named text-to-text function; subclasses implement `__call__`.

  A `batched` tool (a trained model on the accelerator) takes all of a step's calls at
  once through `call_batch`, in the calling thread: it cannot be timed out, so it bounds
  its own work (a model decodes at most its max_length)."""

  limits: Limits = Limits()
  batched: bool = False

  def __call__(self, argument: str) -> str:
    raise NotImplementedError

  def call_batch(self, arguments: Sequence[str]) -> list[str]:
    return [self(argument) for argument in arguments]

  def close(self) -> None:
    """Releases what the tool holds (processes, indexes)."""


@dataclasses.dataclass(frozen=True)
class CallResult:
  """One call as run: `text` is what the model reads (the result, or the error's text)."""

  tool: str
  argument: str
  text: str
  error: Optional[str]  # None, 'unknown tool', 'error', 'timeout' or 'too long'
  milliseconds: float

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def bounded(text: str, limit: int) -> str:
  return text if len(text) <= limit else text[: max(limit - 3, 0)] + '...'


def is_batched(tools: dict, name: str) -> bool:
  return getattr(tools.get(name), 'batched', False)


def run_calls(tools: dict, calls: Sequence[tuple[str, str]]) -> list[CallResult]:
  """Runs every (tool name, argument): each batched tool's calls as one batch, the others
  concurrently, each within its limits. Never raises."""
  results: list = [None] * len(calls)
  batches: dict[str, list[int]] = {}
  singles = []
  for i, (name, _) in enumerate(calls):
    (batches.setdefault(name, []) if is_batched(tools, name) else singles).append(i)
  futures = [_CALLERS.submit(run_call, tools, *calls[i]) for i in singles]
  for name, indices in batches.items():
    batch = _run_batch(tools[name], name, [calls[i][1] for i in indices])
    for i, result in zip(indices, batch):
      results[i] = result
  for i, future in zip(singles, futures):
    results[i] = future.result()
  return results


def _run_batch(tool: Tool, name: str, arguments: list[str]) -> list[CallResult]:
  """A batched tool's calls in one go; each call's milliseconds are the batch's."""
  start = time.perf_counter()
  limit = tool.limits.max_result_chars
  try:
    texts = [str(text) for text in tool.call_batch(arguments)]
    errors = [None] * len(arguments)
  except ToolError as e:
    texts, errors = [bounded(f'error: {e}', limit)] * len(arguments), ['error'] * len(arguments)
  except Exception as e:  # pylint: disable=broad-except  # a tool's bug: the model reads it
    text = bounded(f'error: {type(e).__name__}: {e}', limit)
    texts, errors = [text] * len(arguments), ['error'] * len(arguments)
  ms = (time.perf_counter() - start) * 1000
  results = []
  for argument, text, error in zip(arguments, texts, errors):
    if len(text) > limit:
      text, error = f'error: {len(text)} characters, over the cap of {limit}', 'too long'
    results.append(CallResult(name, argument, text, error, ms))
  return results


def run_call(tools: dict, name: str, argument: str) -> CallResult:
  """Runs `tools[name](argument)` within the tool's limits; never raises."""
  start = time.perf_counter()

  def done(text: str, error: Optional[str] = None) -> CallResult:
    ms = (time.perf_counter() - start) * 1000
    return CallResult(name, argument, text, error, ms)

  tool = tools.get(name)
  if tool is None:
    return done(f'error: unknown tool {bounded(name, 40)!r}', 'unknown tool')
  limits = tool.limits
  future = _POOL.submit(tool, argument)
  try:
    result = future.result(timeout=limits.timeout_s)
  except concurrent.futures.TimeoutError:
    return done(f'error: timed out after {limits.timeout_s:g} s', 'timeout')
  except ToolError as e:
    return done(bounded(f'error: {e}', limits.max_result_chars), 'error')
  except Exception as e:  # pylint: disable=broad-except  # a tool's bug: the model reads it
    return done(bounded(f'error: {type(e).__name__}: {e}', limits.max_result_chars), 'error')
  result = str(result)
  if len(result) > limits.max_result_chars:
    return done(
      f'error: {len(result)} characters, over the cap of {limits.max_result_chars}', 'too long'
    )
  return done(result)
