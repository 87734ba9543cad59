"""TOOLS as a user binds it in gin: each tool made at start-up, and a bad binding named in
one line before anything loads."""

import json

import gin
import pytest
import seqio

from t5pt.runtime.errors import UserError
from t5pt.tools import base
from t5pt.tools import registry
from t5pt.tools import syntax


@gin.configurable('test_tool_registry')
def _bound(tools=gin.REQUIRED):
  """Receives TOOLS as a command would: evaluated by gin."""
  return tools


@pytest.fixture
def parsed(tmp_path):
  corpus = tmp_path / 'facts.jsonl'
  corpus.write_text(json.dumps({'title': 'Zorblat', 'text': 'Zorblat is the capital of Quux.'}))

  def parse(text: str) -> dict:
    gin.clear_config()
    gin.parse_config(
      f"tools.bm25.corpus = '{corpus}'\nTOOLS = {text}\ntest_tool_registry.tools = %TOOLS"
    )
    try:
      return _bound()
    finally:
      gin.clear_config()

  return parse


def test_tools_bound_in_gin_answer_calls(parsed):
  tools = registry.check_tools(
    parsed(
      "{'Calculator': @tools.calculator(), 'Search': @tools.bm25(), "
      "'Python': @tools.python(), 'Calendar': @tools.calendar()}"
    ),
    vocabulary=seqio.ByteVocabulary(),
  )
  assert base.run_call(tools, 'Calculator', '400/1400').text == '0.29'
  assert 'capital of Quux' in base.run_call(tools, 'Search', 'capital of Quux').text
  assert base.run_call(tools, 'Python', 'print(6 * 7)').text == '42'
  assert base.run_call(tools, 'Calendar', '').text.startswith('Today is ')


@pytest.mark.parametrize(
  'tools, message',
  [
    ('{}', 'expected a non-empty dict'),
    ("{'Calculator': @tools.calculator}", r"TOOLS\['Calculator'\] = .* is not a tool"),
    ("{'my tool': @tools.calendar()}", "tool name 'my tool' cannot appear in a call"),
    ("[@tools.calendar()]", 'expected a non-empty dict'),
  ],
)
def test_a_bad_binding_is_one_clear_line(parsed, tools, message):
  with pytest.raises(UserError, match=message):
    registry.check_tools(parsed(tools))


def test_markers_the_vocabulary_cannot_write_are_named():
  class NoBraces(seqio.ByteVocabulary):
    def _decode(self, ids):
      return super()._decode(ids).replace('{', '?')

  braces = syntax.CallSyntax(start='{', end='}')
  with pytest.raises(UserError, match=r"cannot write '\{'"):
    registry.check_tools({'Calendar': registry.calendar()}, braces, NoBraces())


def test_a_missing_corpus_stops_before_anything_loads(tmp_path):
  with pytest.raises(UserError, match='tools.bm25.corpus'):
    registry.bm25(corpus=str(tmp_path / 'absent.jsonl'))
