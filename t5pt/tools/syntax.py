"""Tool calls as text: finding, parsing and rendering them, apart from the tools and decoding.

Toolformer's form (Schick et al. 2023) by default: `[Name(argument) -> result]`, or
`[Name(argument)]` for a call written without a result; a CallSyntax sets the markers. A name
is an ASCII identifier (`[A-Za-z_][A-Za-z0-9_]*`) right after the start marker, and the open
paren follows it directly. What a model wrote is untrusted text: nothing here evaluates it, and
a span that does not parse as a call stays text.

The argument runs from the open paren to the close paren that balances it, counting every
paren; if that one is not followed (after whitespace) by the arrow or the end marker, counting
only the parens outside string literals ('...' or "...", backslash escapes). So code such as
`print(")")` makes an argument, and so does text with an apostrophe (`What's (the) name?`).
An argument is at most MAX_ARGUMENT_CHARS characters. A result runs from the arrow to the
next end marker and holds no start marker.

When a call closes, for the decoding loop: the model writes `[Name(argument)`, then the arrow.
The call closes at the step after which the text ends exactly with `Name(argument)`, optional
whitespace, and the arrow: nothing after the arrow, not even a space (`pending_call` finds it).
The runtime then writes `result_suffix(result)`, ` result]`, and decoding goes on (Toolformer
interrupts decoding at its arrow token in the same way). A call the model ends with the end
marker instead of the arrow is complete without a result, and nothing runs.

The inline form of Toolformer-style Alpaca sets, `name('argument')` or `name("argument")` inside
an answer, is replaced by the tools' results after decoding (`replace_inline_calls`).
"""

import dataclasses
import re
from typing import Callable, Iterable, Iterator, Optional

from t5pt.runtime.errors import UserError

_NAME = r'[A-Za-z_][A-Za-z0-9_]*'
_QUOTES = '\'"'
_WHITESPACE = re.compile(r'\s*')
_SPACES = re.compile(' *')
MAX_ARGUMENT_CHARS = 2000  # a longer argument makes no call: it bounds the work on hostile text


@dataclasses.dataclass(frozen=True)
class CallSyntax:
  """The markers of `[Name(argument) -> result]`; each non-empty, start, end and arrow apart."""

  start: str = '['
  end: str = ']'
  arrow: str = '->'
  open_paren: str = '('
  close_paren: str = ')'

  def __post_init__(self):
    markers = dataclasses.asdict(self)
    blank = [name for name, marker in markers.items() if not marker.strip()]
    if blank:
      raise UserError(f'{self}: the {" and ".join(blank)} marker must not be blank.')
    if len({self.start, self.end, self.arrow}) < 3 or self.open_paren == self.close_paren:
      raise UserError(f'{self}: start, end and arrow must differ, and so must the parens.')


TOOLFORMER = CallSyntax()


@dataclasses.dataclass(frozen=True)
class Call:
  """One call found in `text`: `text[start:end]` is its span."""

  name: str
  argument: str
  result: Optional[str]  # None: written without a result, or still waiting for it
  start: int
  end: int


def _heads(text: str, syntax: CallSyntax) -> Iterator[re.Match]:
  """Every `start Name open_paren` in the text, left to right."""
  pattern = re.escape(syntax.start) + f'({_NAME})' + re.escape(syntax.open_paren)
  return re.finditer(pattern, text)


def _plain_closes(text: str, syntax: CallSyntax) -> dict[int, int]:
  """For each open paren, where the text after it begins -> the index of the close paren
  that balances it, counting every paren (one pass, however many heads there are)."""
  parens = re.compile(f'({re.escape(syntax.open_paren)})|{re.escape(syntax.close_paren)}')
  closes, opened = {}, []
  for paren in parens.finditer(text):
    if paren.group(1):
      opened.append(paren.end())
    elif opened:
      closes[opened.pop()] = paren.start()
  return closes


def _quoted_close(text: str, begin: int, syntax: CallSyntax) -> int:
  """The index of the close paren balancing an open paren that ends at `begin`, counting
  only the parens outside string literals; -1 if a literal does not close or no such paren
  comes within MAX_ARGUMENT_CHARS."""
  depth, i, stop = 1, begin, min(len(text), begin + MAX_ARGUMENT_CHARS + 1)
  while i < stop:
    if text[i] in _QUOTES:
      j = i + 1
      while j < stop and text[j] != text[i]:
        j += 2 if text[j] == '\\' else 1
      if j >= stop:
        return -1
      i = j + 1
    elif text.startswith(syntax.close_paren, i):
      depth -= 1
      if depth == 0:
        return i
      i += len(syntax.close_paren)
    elif text.startswith(syntax.open_paren, i):
      depth += 1
      i += len(syntax.open_paren)
    else:
      i += 1
  return -1


def _closes(text: str, begin: int, syntax: CallSyntax, plain: dict[int, int]) -> list[int]:
  """Where the argument that begins at `begin` may end: its balancing paren counting every
  paren, then counting those outside literals (the same where no quote comes)."""
  closes = [plain.get(begin, -1)]
  if any(quote in text[begin : begin + MAX_ARGUMENT_CHARS] for quote in _QUOTES):
    closes.append(_quoted_close(text, begin, syntax))
  return [close for close in closes if 0 <= close - begin <= MAX_ARGUMENT_CHARS]


def _complete(text: str, head: re.Match, syntax: CallSyntax, plain: dict) -> Optional[Call]:
  """The complete call that starts at `head`, if one does."""
  for close in _closes(text, head.end(), syntax, plain):
    after = _WHITESPACE.match(text, close + len(syntax.close_paren)).end()
    argument = text[head.end() : close]
    if text.startswith(syntax.end, after):
      return Call(head.group(1), argument, None, head.start(), after + len(syntax.end))
    if not text.startswith(syntax.arrow, after):
      continue
    begin = after + len(syntax.arrow)
    end = text.find(syntax.end, begin)
    if end >= 0 and syntax.start not in text[begin:end]:
      result = text[begin:end].strip()
      return Call(head.group(1), argument, result, head.start(), end + len(syntax.end))
  return None


def find_calls(text: str, syntax: CallSyntax = TOOLFORMER) -> list[Call]:
  """The complete calls in `text`, with or without a result, left to right and apart."""
  calls, plain = [], _plain_closes(text, syntax)
  for head in _heads(text, syntax):
    if calls and head.start() < calls[-1].end:
      continue
    call = _complete(text, head, syntax, plain)
    if call is not None:
      calls.append(call)
  return calls


def parse_call(span: str, syntax: CallSyntax = TOOLFORMER) -> Optional[Call]:
  """The call that is all of `span` (surrounding whitespace aside), or None."""
  stripped = span.strip()
  calls = find_calls(stripped, syntax)
  if len(calls) == 1 and calls[0].start == 0 and calls[0].end == len(stripped):
    return calls[0]
  return None


def pending_call(text: str, syntax: CallSyntax = TOOLFORMER) -> Optional[Call]:
  """The call that has just closed at the end of `text` and waits for its result (module
  docstring), with `result` None and `end` the length of `text`; None if there is none."""
  if not text.endswith(syntax.arrow):
    return None
  before = text[: len(text) - len(syntax.arrow)].rstrip()
  if not before.endswith(syntax.close_paren):
    return None
  close, plain = len(before) - len(syntax.close_paren), _plain_closes(text, syntax)
  for head in reversed(list(_heads(text, syntax))):
    if close - head.end() > MAX_ARGUMENT_CHARS:
      break
    if close in _closes(text, head.end(), syntax, plain):
      return Call(head.group(1), text[head.end() : close], None, head.start(), len(text))
  return None


def result_suffix(result: str, syntax: CallSyntax = TOOLFORMER) -> str:
  """What the runtime writes after a call's arrow: ` result]`. The start and end markers are
  taken out of the result, so that the call still parses as one."""
  for marker in (syntax.start, syntax.end):
    result = result.replace(marker, '')
  return f' {result}{syntax.end}'


def render_call(
  name: str, argument: str, result: Optional[str] = None, syntax: CallSyntax = TOOLFORMER
) -> str:
  """`[name(argument) -> result]`, or `[name(argument)]` when `result` is None."""
  call = f'{syntax.start}{name}{syntax.open_paren}{argument}{syntax.close_paren}'
  if result is None:
    return call + syntax.end
  return f'{call} {syntax.arrow}{result_suffix(result, syntax)}'


def strip_calls(text: str, syntax: CallSyntax = TOOLFORMER) -> str:
  """`text` without its complete calls. Each span goes with the spaces just before it, or,
  where it starts the text or a line, with the spaces just after it: `of 1400 [Calculator(
  400/1400) -> 0.29] 29%` becomes `of 1400 29%`."""
  pieces, position = [], 0
  for call in find_calls(text, syntax):
    pieces.append(text[position : call.start].rstrip(' '))
    position = call.end
    so_far = ''.join(pieces)
    if not so_far or so_far.endswith('\n'):
      position = _SPACES.match(text, position).end()
  return ''.join(pieces) + text[position:]


def find_inline_calls(text: str, names: Iterable[str]) -> list[Call]:
  """The inline calls `name('argument')` / `name("argument")` of the given tool names in
  `text`, left to right (result None). The argument ends at the first quote like its
  opening one that a close paren follows, so it may hold the other quote, apostrophes and
  parens; escapes are not read. A name glued to a word or a dot before it is no call."""
  names = sorted(set(names), key=len, reverse=True)
  if not names:
    return []
  pattern = r'(?<![\w.])(' + '|'.join(map(re.escape, names)) + r')\(\s*([\'"])(.*?)\2\s*\)'
  return [
    Call(m.group(1), m.group(3), None, m.start(), m.end())
    for m in re.finditer(pattern, text, re.DOTALL)
  ]


def replace_inline_calls(text: str, names: Iterable[str], result: Callable[[str, str], str]) -> str:
  """`text` with each inline call (find_inline_calls) replaced by `result(name, argument)`."""
  pieces, position = [], 0
  for call in find_inline_calls(text, names):
    pieces += [text[position : call.start], result(call.name, call.argument)]
    position = call.end
  return ''.join(pieces) + text[position:]


def unwritable_characters(vocabulary, syntax: CallSyntax = TOOLFORMER, extra: str = '') -> str:
  """The characters of the syntax's markers and of `extra` (e.g. example code) that a seqio
  vocabulary cannot write, in order of first appearance ('' if none); `repr()` of the answer
  prints in one line. A character is writable if `a<c>a` survives `vocabulary.encode` and
  `decode` unchanged; between letters, so that whitespace is judged too. T5's SentencePiece
  vocabulary cannot write `<`, `\\`, `^`, backquotes, `{`, `}`, `~`, `→`, `…`, tabs or newlines;
  seqio.ByteVocabulary writes everything."""
  characters = dict.fromkeys(''.join(dataclasses.astuple(syntax)) + extra)
  return ''.join(
    c for c in characters if vocabulary.decode(vocabulary.encode(f'a{c}a')) != f'a{c}a'
  )
