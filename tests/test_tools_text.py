"""The text tools and the call syntax (t5pt/tools/): pure Python, no JAX compile."""

import datetime
import json
import os
import time

import pytest

from t5pt.runtime.errors import UserError
from t5pt.tools import base
from t5pt.tools import syntax
from t5pt.tools.calculator import Calculator
from t5pt.tools.calendar import Calendar
from t5pt.tools.retrieval import Retrieval
from tests.conftest import INTEROP

T5_VOCABULARY = os.path.join(INTEROP, 't5x_tiny', 't5_vocab')
API = syntax.CallSyntax(start='<API>', end='</API>', arrow='→')


# The call syntax.


def test_calls_are_found_with_and_without_a_result():
  text = 'Out of 1400 [Calculator(400/1400) -> 0.29] 29% passed [Calendar()].'
  first, second = syntax.find_calls(text)
  assert first == syntax.Call('Calculator', '400/1400', '0.29', 12, 42)
  assert text[first.start : first.end] == '[Calculator(400/1400) -> 0.29]'
  assert (second.name, second.argument, second.result) == ('Calendar', '', None)
  assert syntax.strip_calls(text) == 'Out of 1400 29% passed.'


@pytest.mark.parametrize(
  'argument',
  [
    '(2+3)*4',
    "What's the (old) name?",
    'print(")")',
    "print(')', \"(\")",
    'x = [1, 2][0]',
    'f(g(1), (2))',
    '',
  ],
)
def test_a_rendered_call_parses_back_whatever_its_argument_holds(argument):
  for result in ('0.29', None):
    rendered = syntax.render_call('Python', argument, result)
    assert syntax.parse_call(rendered) == syntax.Call('Python', argument, result, 0, len(rendered))
    assert syntax.strip_calls(f'a {rendered} b') == 'a b'


@pytest.mark.parametrize(
  'text',
  [
    '[Calculator(1+2 -> 3]',  # the argument never closes
    '[Calculator(1+2) -> 3',  # no end marker
    '[Calculator(1+2) 3]',  # neither arrow nor end after the argument
    '[1+2]',
    '[ Calculator(1)]',
    '[Calculator (1)]',
    '[Calc-ulator(1)]',
    'f(x) -> y]',
    '[]',
    '[[[(((',
  ],
)
def test_malformed_spans_stay_text(text):
  assert syntax.find_calls(text) == []
  assert syntax.strip_calls(text) == text
  assert syntax.pending_call(text) is None


def test_a_result_never_holds_a_call_start_so_a_broken_call_leaves_the_next_one_whole():
  text = 'x [QA(who) -> no end [Calculator(2*3) -> 6] y'
  (call,) = syntax.find_calls(text)
  assert (call.name, call.result) == ('Calculator', '6')
  assert syntax.strip_calls(text) == 'x [QA(who) -> no end y'


def test_a_call_closes_when_the_text_ends_with_the_arrow():
  text = 'The ratio is [Calculator(400/1400) ->'
  assert syntax.pending_call(text) == syntax.Call('Calculator', '400/1400', None, 13, len(text))
  assert syntax.pending_call('[Calculator(400/1400)->').argument == '400/1400'
  assert syntax.pending_call('[Python(print(")")) ->').argument == 'print(")")'
  assert syntax.pending_call('[Python(x = [1, 2]) ->').argument == 'x = [1, 2]'
  assert syntax.pending_call('[QA(What\'s "x"?) ->').argument == 'What\'s "x"?'
  # Not (yet) closed: still inside the argument, no arrow, something after it, answered.
  for text in [
    '[Calculator(400/1400',
    '[Calculator(400/1400) -',
    '[Calculator(f(1) ->',
    '[Calculator(400/1400)]',
    '[Calculator(400/1400) -> ',
    '[Calculator(400/1400) -> 0.29]',
    '[Calculator(1) -> 1] and (2) ->',
    'no call ->',
  ]:
    assert syntax.pending_call(text) is None, text


def test_the_runtime_writes_the_result_after_the_arrow_and_the_call_is_complete():
  text = 'I scored 400 of 1400 [Calculator(400/1400) ->'
  call = syntax.pending_call(text)
  text += syntax.result_suffix('0.29') + ' 29%.'
  assert text == 'I scored 400 of 1400 [Calculator(400/1400) -> 0.29] 29%.'
  assert syntax.find_calls(text)[0] == syntax.Call(call.name, call.argument, '0.29', call.start, 51)
  assert syntax.strip_calls(text) == 'I scored 400 of 1400 29%.'
  assert syntax.pending_call(text + ' and [QA(x) ->').name == 'QA'


def test_markers_in_a_result_are_taken_out_so_the_call_stays_one():
  rendered = syntax.render_call('Search', 'x', 'cited [1] and [2')
  assert rendered == '[Search(x) -> cited 1 and 2]'
  assert syntax.parse_call(rendered).result == 'cited 1 and 2'


def test_strip_calls_keeps_lines_and_spacing():
  calc = syntax.render_call('Calculator', '2+2', '4')
  assert syntax.strip_calls(f'{calc} 4 apples') == '4 apples'
  assert syntax.strip_calls(f'  {calc} {calc} 4') == '4'
  assert syntax.strip_calls(f'one\n{calc} two') == 'one\ntwo'
  assert syntax.strip_calls(f'a {calc}{calc}, b {calc}') == 'a, b'
  assert syntax.strip_calls('no calls ') == 'no calls '


def test_the_markers_are_configurable():
  rendered = syntax.render_call('Calculator', '1+1', '2', API)
  assert rendered == '<API>Calculator(1+1) → 2</API>'
  text = f'x {rendered} y <API>Calendar() →'
  assert syntax.find_calls(text, API)[0].result == '2'
  assert syntax.pending_call(text, API).name == 'Calendar'
  assert syntax.strip_calls(text, API) == 'x y <API>Calendar() →'
  assert syntax.find_calls(rendered) == []
  for bad in [dict(start=''), dict(arrow=' '), dict(end='['), dict(close_paren='(')]:
    with pytest.raises(UserError, match='CallSyntax'):
      syntax.CallSyntax(**bad)


def test_inline_calls_are_replaced_by_their_results():
  text = (
    "It is Calculator('400/1400') or Calculator(\"1/2\"); QA( \"What's up (now)?\" ) "
    "and myCalculator('1') and x.Calculator('1'), Search('x'), Calculator('open"
  )
  calls = syntax.find_inline_calls(text, ['Calculator', 'QA'])
  assert [(c.name, c.argument) for c in calls] == [
    ('Calculator', '400/1400'),
    ('Calculator', '1/2'),
    ('QA', "What's up (now)?"),
  ]
  assert text[calls[0].start : calls[0].end] == "Calculator('400/1400')"
  replaced = syntax.replace_inline_calls(text, {'Calculator', 'QA'}, lambda n, a: f'<{n}:{a}>')
  assert replaced.startswith("It is <Calculator:400/1400> or <Calculator:1/2>; <QA:What's up")
  assert replaced.endswith("myCalculator('1') and x.Calculator('1'), Search('x'), Calculator('open")
  assert syntax.replace_inline_calls(text, [], lambda n, a: '') == text


def test_a_byte_vocabulary_writes_every_character():
  import seqio

  code = 'def f(x):\n\treturn {"a": x < 1 and ~x ^ 2}  # \\ → …'
  assert syntax.unwritable_characters(seqio.ByteVocabulary(), API, extra=code) == ''


@pytest.mark.skipif(not os.path.isdir(INTEROP), reason=f'no interop fixtures at {INTEROP}')
def test_which_characters_the_t5_vocabulary_cannot_write():
  import seqio

  vocabulary = seqio.SentencePieceVocabulary(T5_VOCABULARY)
  assert syntax.unwritable_characters(vocabulary) == ''  # [ ] ( ) -> all survive
  assert syntax.unwritable_characters(vocabulary, API) == '<→'
  code = 'def f(x):\n\treturn {"a": x < 1 and ~x ^ 2}  # \\ → … `'
  assert syntax.unwritable_characters(vocabulary, extra=code) == '\n\t{<~^}\\→…`'


# The calculator.


@pytest.mark.parametrize(
  'expression, result',
  [
    ('400/1400', '0.29'),
    (' 400 / 1400 ', '0.29'),
    ('6/3', '2'),
    ('1/4', '0.25'),
    ('2.5*2', '5'),
    ('(2+3)*4', '20'),
    ('-(-3) - 10', '-7'),
    ('.5+.25', '0.75'),
    ('-0.001', '0'),
    ('1/3', '0.33'),
    ('99999999999999999999*99999999999999999999', '9999999999999999999800000000000000000001'),
  ],
)
def test_the_calculator_follows_toolformers_conventions(expression, result):
  assert Calculator()(expression) == result


def test_calculator_options():
  assert Calculator(decimals=4)('1/3') == '0.3333'
  assert Calculator(decimals=0)('7/2') == '4'
  assert Calculator(allow_power=True)('2**10 + 2**0.5') == '1025.41'
  for bad in [dict(decimals=-1), dict(decimals=1.5), dict(max_chars=0)]:
    with pytest.raises(UserError, match='Calculator'):
      Calculator(**bad)


HOSTILE = [
  '9**9**9',
  '10**100000',
  '1/0',
  "__import__('os')",
  "__import__('os').system('echo hi')",
  '().__class__',
  "().__class__.__bases__[0].__subclasses__()",
  "'a'*10**9",
  '1' + '+1' * 5000,
  '(' * 1000 + '1' + ')' * 1000,
  '-' * 1000 + '1',
  '1//2',
  '()',
  '(1)(2)',
  '1 2',
  '1e308*10',
  'open("/etc/passwd").read()',
  'lambda: 1',
  '[1]*10**9',
  '',
  '1;2',
  '1\n2',
]


@pytest.mark.parametrize('allow_power', [False, True])
@pytest.mark.parametrize('expression', HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_calculator_input_ends_as_a_bounded_error_quickly(expression, allow_power):
  for max_chars in (200, 20_000):
    calculator = Calculator(allow_power=allow_power, max_chars=max_chars)
    start = time.perf_counter()
    with pytest.raises(base.ToolError) as raised:
      calculator(expression)
    assert time.perf_counter() - start < 0.5
    message = str(raised.value)
    assert '\n' not in message and len(message) < 200, message


def test_powers_are_bounded_when_allowed():
  calculator = Calculator(allow_power=True)
  assert calculator('10**99') == '1' + '0' * 99
  for expression in ['9**9**9', '10**100000', '10**100', '0.5**-1000', '(-8)**0.5', '10**99*10']:
    with pytest.raises(base.ToolError):
      calculator(expression)
  assert calculator('2**-(10**50)') == '0'


def test_calls_run_through_run_call_into_bounded_records():
  tools = {'Calculator': Calculator(), 'Calendar': Calendar(lambda: datetime.date(2023, 1, 30))}
  ok = base.run_call(tools, 'Calculator', '400/1400')
  assert (ok.text, ok.error) == ('0.29', None)
  failed = base.run_call(tools, 'Calculator', '9**9**9')
  assert failed.error == 'error' and failed.text.startswith('error: ** (power) is off')
  divided = base.run_call(tools, 'Calculator', '1/0')
  assert (divided.text, divided.error) == ('error: division by zero', 'error')
  unknown = base.run_call(tools, 'Python', 'import os')
  assert (unknown.text, unknown.error) == ("error: unknown tool 'Python'", 'unknown tool')
  assert base.run_call(tools, 'Calendar', 'ignored').text == 'Today is Monday, January 30, 2023.'
  assert json.dumps(failed.to_json())


# Retrieval.

PASSAGES = [
  {'title': 'Paris', 'text': 'Paris is the capital and largest city of France.'},
  {'title': 'Berlin', 'text': 'Berlin is the capital of Germany.'},
  {'title': 'Brown Act', 'text': 'The Ralph M. Brown Act guarantees the public the right\n'},
  {'text': 'Cats sleep [1] most of the day.'},
  {'title': 'Long', 'text': 'capital ' * 200},
]


def _jsonl(tmp_path, rows, name='corpus.jsonl'):
  path = tmp_path / name
  path.write_text(''.join(json.dumps(r) + '\n' if isinstance(r, dict) else r for r in rows))
  return str(path)


def test_retrieval_returns_the_best_passages_joined_and_trimmed(tmp_path):
  tool = Retrieval(_jsonl(tmp_path, PASSAGES + ['\n']))
  assert tool('Brown Act') == 'Brown Act: The Ralph M. Brown Act guarantees the public the right'
  assert tool('What do cats do?') == 'Cats sleep [1] most of the day.'
  result = tool('capital of France')
  assert result.startswith('Paris: Paris is the capital and largest city of France. | ')
  assert result.count(' | ') == 2 and len(result) <= tool.limits.max_result_chars
  assert Retrieval(_jsonl(tmp_path, PASSAGES), k=1, separator=' ... ')('capital France') == (
    'Paris: Paris is the capital and largest city of France.'
  )
  for query in ['the of and', 'zebra', '', '(((']:
    with pytest.raises(base.ToolError, match='no passage matches'):
      tool(query)
  assert base.run_call({'Search': tool}, 'Search', 'zebra').error == 'error'


def test_retrieval_reads_a_tsv_corpus(tmp_path):
  path = tmp_path / 'psgs.tsv'
  path.write_text('id\ttext\ttitle\n1\t"Berlin is the capital of Germany."\tBerlin\n2\tOslo.\t\n')
  tool = Retrieval(str(path), k=5)
  assert tool('Germany capital') == 'Berlin: Berlin is the capital of Germany.'
  assert tool('oslo') == 'Oslo.'


@pytest.mark.parametrize(
  'name, content, message',
  [
    ('missing.jsonl', None, 'is not a file'),
    ('empty.jsonl', '\n\n', 'holds no passages'),
    ('c.jsonl', '{"text": "ok"}\n{"text": \n', r'c\.jsonl:2: not valid JSON'),
    ('c.jsonl', '["text"]\n', r'c\.jsonl:1: a JSON list'),
    ('c.jsonl', '{"title": "no text"}\n', r'c\.jsonl:1: "text" is None'),
    ('c.jsonl', '{"text": "x", "title": 3}\n', r'c\.jsonl:1: "title" is 3'),
    ('c.txt', 'text\n', 'unknown format'),
    ('c.tsv', 'id\tpassage\n1\tx\n', r'c\.tsv:1: the header .* names no "text" column'),
    ('c.tsv', 'id\ttext\n1\tx\n2\n', r'c\.tsv:3: 1 fields under a header of 2'),
    ('c.tsv', 'text\n', 'holds no passages'),
  ],
)
def test_a_bad_corpus_is_one_clear_line_naming_the_setting(tmp_path, name, content, message):
  path = tmp_path / name
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=f'^TOOLS: .*{message}') as raised:
    Retrieval(str(path))
  assert '\n' not in str(raised.value)


def test_corpus_errors_name_the_given_setting(tmp_path):
  path = tmp_path / 'latin1.jsonl'
  path.write_bytes('{"text": "café"}\n'.encode('latin-1'))
  with pytest.raises(UserError, match=r'^TOOLS\[Search\]: .*latin1\.jsonl:1: not UTF-8'):
    Retrieval(str(path), setting='TOOLS[Search]')
  with pytest.raises(UserError, match=r'^TOOLS: Retrieval\(k=0\)'):
    Retrieval(_jsonl(tmp_path, PASSAGES), k=0)
  with pytest.raises(UserError, match='is not a file'):
    Retrieval(str(tmp_path))


# The calendar.


def test_the_calendar_says_today_in_toolformers_wording():
  assert Calendar(lambda: datetime.date(2023, 1, 30))('anything') == (
    'Today is Monday, January 30, 2023.'
  )
  assert Calendar(lambda: datetime.datetime(2024, 2, 29, 23, 59))('') == (
    'Today is Thursday, February 29, 2024.'
  )
  today = datetime.date.today()
  assert Calendar()('').endswith(f' {today.day}, {today.year}.')
