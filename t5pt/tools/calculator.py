"""Arithmetic for the model, Toolformer's calculator: simpleeval, never Python's eval.

Toolformer's conventions by default: numbers (decimals too), + - * /, signs and parentheses.
A result is rounded to `decimals` places and written without trailing zeros or a trailing
point: 400/1400 gives 0.29, 6/3 gives 2, 1/4 gives 0.25. Anything else, a division by zero
included, is a ToolError of one line.

Untrusted input is bounded three times before anything is computed: its length (which also
bounds nesting and the size of any product), a whitelist of characters (no names, strings,
attributes or calls can be written), and an evaluator that knows only these operators. With
`allow_power`, `**` is refused whenever its result would pass 10**100, as is any result that
does.
"""

import ast
import math
import operator

import simpleeval

from t5pt.runtime.errors import UserError
from t5pt.tools import base

MAX_DIGITS = 100  # results beyond 10**100 are refused: no arithmetic a model asks for needs them
_CHARACTERS = frozenset('0123456789.+-*/() ')
_OPERATORS = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
  ast.USub: operator.neg,
  ast.UAdd: operator.pos,
}


def _power(number: float, exponent: float) -> float:
  """`number ** exponent`, refused before it is computed if it would pass 10**MAX_DIGITS."""
  if number != 0 and exponent * math.log10(abs(number)) > MAX_DIGITS:
    raise base.ToolError(f'the power is beyond 10**{MAX_DIGITS}')
  return number**exponent


class Calculator(base.Tool):
  """Arithmetic on one expression, e.g. `400/1400` -> `0.29`.

  decimals: the places a result is rounded to. allow_power: accept `**` (bounded).
  max_chars: the longest expression accepted.
  """

  def __init__(self, decimals: int = 2, allow_power: bool = False, max_chars: int = 200):
    for name, value, minimum in (('decimals', decimals, 0), ('max_chars', max_chars, 1)):
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f'Calculator({name}={value!r}): must be a whole number >= {minimum}.')
    self.decimals = decimals
    self.allow_power = allow_power
    self.max_chars = max_chars
    self._operators = {**_OPERATORS, **({ast.Pow: _power} if allow_power else {})}

  def __call__(self, argument: str) -> str:
    expression = argument.strip()
    if len(expression) > self.max_chars:
      raise base.ToolError(
        f'the expression is {len(expression)} characters; the calculator takes at most {self.max_chars}'
      )
    allowed = 'numbers, + - * /' + (' **' if self.allow_power else '') + ' and parentheses'
    stray = next((c for c in expression if c not in _CHARACTERS), None)
    if stray is not None:
      raise base.ToolError(f'{stray!r} is not arithmetic; the calculator takes {allowed}')
    if not expression:
      raise base.ToolError(f'no expression; the calculator takes {allowed}')
    if '**' in expression and not self.allow_power:
      raise base.ToolError(f'** (power) is off; the calculator takes {allowed}')
    shown = repr(base.bounded(expression, 60))
    evaluator = simpleeval.SimpleEval(operators=self._operators, functions={}, names={})
    try:
      value = evaluator.eval(expression)
    except ZeroDivisionError:
      raise base.ToolError('division by zero') from None
    except OverflowError:
      raise base.ToolError('the result is out of range') from None
    except (SyntaxError, RecursionError, MemoryError, simpleeval.InvalidExpression):
      raise base.ToolError(f'{shown} is not arithmetic; the calculator takes {allowed}') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise base.ToolError(f'{shown} is not a real number')
    if not math.isfinite(value) or abs(value) >= 10**MAX_DIGITS:
      raise base.ToolError(f'the result is beyond 10**{MAX_DIGITS}')
    return self._written(value)

  def _written(self, value: float) -> str:
    if isinstance(value, int):
      return str(value)
    text = f'{value:.{self.decimals}f}'
    if '.' in text:
      text = text.rstrip('0').rstrip('.')
    return '0' if text == '-0' else text
