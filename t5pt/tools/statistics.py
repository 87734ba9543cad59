"""How a decode used its tools: the numbers Toolformer reports per task (calls per example,
the share of examples that call each tool) and what went wrong (errors, time-outs)."""

import statistics
from typing import Iterable, Sequence

from t5pt.tools import base


def tool_use(calls: Sequence[Sequence[base.CallResult]], tools: Iterable[str]) -> dict:
  """{statistic: value} over examples, `calls[i]` being example i's calls in order.

  calls_per_example, examples_with_calls (%); per tool (the configured ones, and any name
  the model called that is not one): <tool>/examples (% of examples that call it),
  <tool>/calls, <tool>/errors (all failures, time-outs included), <tool>/timeouts,
  <tool>/median_ms."""
  examples = max(len(calls), 1)
  everything = [call for row in calls for call in row]
  stats = {
    'calls_per_example': len(everything) / examples,
    'examples_with_calls': 100.0 * sum(bool(row) for row in calls) / examples,
  }
  for name in sorted(set(tools) | {call.tool for call in everything}):
    mine = [call for call in everything if call.tool == name]
    stats.update(
      {
        f'{name}/examples': 100.0
        * sum(any(c.tool == name for c in row) for row in calls)
        / examples,
        f'{name}/calls': len(mine),
        f'{name}/errors': sum(call.error is not None for call in mine),
        f'{name}/timeouts': sum(call.error == 'timeout' for call in mine),
        f'{name}/median_ms': statistics.median(c.milliseconds for c in mine) if mine else 0.0,
      }
    )
  return stats


def describe(stats: dict) -> str:
  """One line for a terminal: calls per example, then each tool's share and failures."""
  parts = [f'{stats["calls_per_example"]:.2f} calls/example']
  tools = sorted({key.split('/')[0] for key in stats if '/' in key})
  for name in tools:
    part = f'{name} {stats[f"{name}/examples"]:.1f}% of examples'
    if stats[f'{name}/errors']:
      part += f' ({stats[f"{name}/errors"]} errors, {stats[f"{name}/timeouts"]} timed out)'
    parts.append(part)
  return ', '.join(parts)
