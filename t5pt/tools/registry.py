"""The tools as gin names them, and the check of a `TOOLS` binding before anything loads.

    TOOLS = {
      'Calculator': @tools.calculator(),
      'Search': @tools.bm25(),
      'Python': @tools.python(),
      'Calendar': @tools.calendar(),
    }
    tools.bm25.corpus = 'gs://bucket/passages.jsonl'

Each factory makes its tool when gin evaluates the binding, so a missing corpus or a
platform without the sandbox's walls is one clear error at start-up.
"""

import re
from typing import Mapping, Optional

import gin
import seqio

from t5pt.runtime.errors import UserError
from t5pt.tools import base
from t5pt.tools import calculator as calculator_lib
from t5pt.tools import calendar as calendar_lib
from t5pt.tools import retrieval
from t5pt.tools import sandbox
from t5pt.tools import syntax as syntax_lib

NAME = r'[A-Za-z_][A-Za-z0-9_]*'


gin.external_configurable(syntax_lib.CallSyntax, module='tools')


@gin.configurable(module='tools')
def calculator(decimals: int = 2, allow_power: bool = False) -> base.Tool:
  """Arithmetic with Toolformer's conventions (+ - * /, two decimals)."""
  return calculator_lib.Calculator(decimals=decimals, allow_power=allow_power)


@gin.configurable(module='tools')
def bm25(corpus: str = gin.REQUIRED, k: int = 3) -> base.Tool:
  """BM25 over the passages of `corpus` (.jsonl or .tsv, local or gs://)."""
  return retrieval.Retrieval(corpus, k=k, setting='tools.bm25.corpus')


@gin.configurable(module='tools')
def python(
  cpu_seconds: int = 2,
  wall_seconds: float = 5.0,
  memory_mb: int = 512,
  output_bytes: int = 8192,
  network_namespace: str = 'try',
) -> base.Tool:
  """Model-written Python in the sandbox (t5pt/tools/sandbox.py)."""
  walls = sandbox.Walls(
    cpu_seconds=cpu_seconds,
    wall_seconds=wall_seconds,
    memory_bytes=memory_mb << 20,
    output_bytes=output_bytes,
    network_namespace=network_namespace,
  )
  return sandbox.Python(walls, setting='tools.python')


@gin.configurable(module='tools')
def calendar() -> base.Tool:
  """Today's date in Toolformer's wording."""
  return calendar_lib.Calendar()


def check_tools(
  tools: Mapping,
  syntax: syntax_lib.CallSyntax = syntax_lib.TOOLFORMER,
  vocabulary: Optional[seqio.Vocabulary] = None,
  setting: str = 'TOOLS',
  inline: bool = False,
) -> dict:
  """`tools` as {name: Tool}, checked: names a call can carry, values that are tools, and
  markers the model's vocabulary can write. A UserError names what to fix."""
  if not isinstance(tools, Mapping) or not tools:
    raise UserError(
      f'{setting} = {tools!r}: expected a non-empty dict of tool name -> tool, e.g. '
      "{'Calculator': @tools.calculator()} (note the @ and the parentheses)."
    )
  for name, tool in tools.items():
    if not isinstance(name, str) or not re.fullmatch(NAME, name):
      raise UserError(
        f'{setting}: tool name {name!r} cannot appear in a call; use letters, '
        'digits and underscores, e.g. Calculator.'
      )
    if not isinstance(tool, base.Tool):
      raise UserError(
        f'{setting}[{name!r}] = {tool!r} is not a tool: use one of @tools.calculator(), '
        '@tools.bm25(), @tools.python(), @tools.calendar(), @tools.run() (note the '
        'parentheses).'
      )
  if vocabulary is not None:
    extra = ''.join(tools) + ('(\'")' if inline else '')
    missing = syntax_lib.unwritable_characters(vocabulary, syntax, extra=extra)
    if missing:
      raise UserError(
        f'{setting}: the model\'s vocabulary cannot write {missing!r}, which its calls '
        'need (the call markers or a tool name); choose markers it can write, e.g. '
        "'[' ']' '(' ')' '->' for T5's SentencePiece vocabulary."
      )
  return dict(tools)
