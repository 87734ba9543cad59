"""One tool call, whatever the tool does: a bounded result that never raises."""

import time

from t5pt.tools import base


class _Slow(base.Tool):
  limits = base.Limits(timeout_s=0.2)

  def __call__(self, argument):
    time.sleep(2)
    return 'late'


class _Chatty(base.Tool):
  limits = base.Limits(max_result_chars=10)

  def __call__(self, argument):
    return argument * 100


class _Buggy(base.Tool):
  def __call__(self, argument):
    raise KeyError(argument)


class _Refusing(base.Tool):
  def __call__(self, argument):
    raise base.ToolError(f'cannot do {argument}')


TOOLS = {'Slow': _Slow(), 'Chatty': _Chatty(), 'Buggy': _Buggy(), 'Refusing': _Refusing()}


def test_each_failure_is_a_bounded_error_text_and_counted():
  start = time.monotonic()
  slow = base.run_call(TOOLS, 'Slow', 'x')
  assert time.monotonic() - start < 1.5
  assert (slow.error, slow.text) == ('timeout', 'error: timed out after 0.2 s')
  chatty = base.run_call(TOOLS, 'Chatty', 'abc')
  assert chatty.error == 'too long' and chatty.text == 'error: 300 characters, over the cap of 10'
  buggy = base.run_call(TOOLS, 'Buggy', 'k')
  assert (buggy.error, buggy.text) == ('error', "error: KeyError: 'k'")
  refusing = base.run_call(TOOLS, 'Refusing', '2')
  assert (refusing.error, refusing.text) == ('error', 'error: cannot do 2')
  unknown = base.run_call(TOOLS, 'Wikipedia' * 20, 'q')
  assert unknown.error == 'unknown tool' and len(unknown.text) < 80


def test_a_good_call_records_its_result_and_time():
  call = base.run_call({'Echo': _Chatty()}, 'Echo', '')
  assert (call.tool, call.argument, call.text, call.error) == ('Echo', '', '', None)
  assert call.milliseconds >= 0 and call.to_json()['tool'] == 'Echo'
