"""Decoding that runs the calls a model writes: a row stops when its call closes, the tool
runs on the host, its result is written in, and decoding goes on."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from t5pt.model import decoding
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.serving import tool_decoding
from t5pt.tools import calculator
from t5pt.tools import syntax as syntax_lib
from tests.conftest import TINY

VOCAB = seqio.ByteVocabulary()
# What the scripted model writes, position by position; the result it writes (9) is wrong.
SCRIPT = ['Sum: [Calculator(2+3) -> 9] done', 'No call here.']


def _scripted(monkeypatch, scripts, only_rows=None):
  """The decoder replaced by one that writes `scripts[row % len(scripts)]` (then EOS),
  whatever it is fed (with `only_rows`, only in batches of that many rows)."""
  ids = np.zeros((len(scripts), 64), np.int32)
  for row, text in enumerate(scripts):
    encoded = VOCAB.encode(text) + [1]
    ids[row, : len(encoded)] = encoded
  real = inference.step_functions

  def step_functions(model, params, encoded, encoder_tokens, prompt_mask, max_length, cache):
    if only_rows and encoded.shape[0] != only_rows:
      return real(model, params, encoded, encoder_tokens, prompt_mask, max_length, cache)

    def step(tokens, index, state):
      script = jnp.asarray(ids)[jnp.arange(tokens.shape[0]) % len(scripts), index]
      return jax.nn.one_hot(script, VOCAB.vocab_size) * 10.0, state

    return jnp.zeros(()), step

  monkeypatch.setattr(inference, 'step_functions', step_functions)
  tool_decoding._decode_fns.cache_clear()


@pytest.fixture
def model_and_params():
  model = models.EncoderDecoderModel(network.T5Config(**{**TINY, 'vocab_size': VOCAB.vocab_size}))
  return model, nn.unbox(model.init(jax.random.PRNGKey(0), 8, 8))


def test_a_closed_call_runs_and_its_result_is_written_in(monkeypatch, model_and_params):
  _scripted(monkeypatch, SCRIPT)
  use = tool_decoding.ToolUse({'Calculator': calculator.Calculator()})
  inputs = np.full((2, 8), 5, np.int32)
  first, second = tool_decoding.decode_with_tools(*model_and_params, inputs, VOCAB, 48, use)
  assert first.text == 'Sum: [Calculator(2+3) -> 5] done'
  assert first.text_without_calls == 'Sum: done'
  (call,) = first.calls
  assert (call.tool, call.argument, call.text, call.error) == ('Calculator', '2+3', '5', None)
  assert (second.text, second.calls) == ('No call here.', [])


def test_other_markers_and_the_inline_style(monkeypatch, model_and_params):
  """TOOL_SYNTAX's markers are what a call is written in; TOOL_CALL_STYLE='inline' runs the
  calls written inside an answer once it is decoded, and puts their results in its place."""
  inputs = np.full((2, 8), 5, np.int32)
  calculator_only = {'Calculator': calculator.Calculator()}
  _scripted(monkeypatch, ['{{Calculator(2+3) => 9}} done', 'x'])
  syntax = syntax_lib.CallSyntax(start='{{', end='}}', arrow='=>')
  use = tool_decoding.ToolUse(calculator_only, syntax)
  row, _ = tool_decoding.decode_with_tools(*model_and_params, inputs, VOCAB, 48, use)
  assert (row.text, row.text_without_calls) == ('{{Calculator(2+3) => 5}} done', 'done')
  _scripted(monkeypatch, ["Calculator('2+3') or Calculator('1/0') [Calculator(1) -> 2]"])
  use = tool_decoding.ToolUse(calculator_only, inline=True)
  row, _ = tool_decoding.decode_with_tools(*model_and_params, inputs, VOCAB, 64, use)
  assert row.text == "Calculator('2+3') or Calculator('1/0') [Calculator(1) -> 2]"
  assert row.text_without_calls == '5 or error: division by zero [Calculator(1) -> 2]'
  assert [c.error for c in row.calls] == [None, 'error']


def test_an_unknown_tool_or_an_arrow_outside_a_call_never_stops_decoding(
  monkeypatch, model_and_params
):
  # The scripted model writes by position: room for the error text the runtime writes in.
  error = "error: unknown tool 'Wiki'"
  _scripted(monkeypatch, ['[Wiki(x) -> ' + '?' * len(error) + '] and a -> b', 'x'])
  use = tool_decoding.ToolUse({'Calculator': calculator.Calculator()}, max_calls=2)
  inputs = np.full((2, 8), 5, np.int32)
  row, _ = tool_decoding.decode_with_tools(*model_and_params, inputs, VOCAB, 64, use)
  assert row.text == f'[Wiki(x) -> {error}] and a -> b'
  assert row.text_without_calls == 'and a -> b'
  assert [c.error for c in row.calls] == ['unknown tool']


def test_beam_search_is_refused(model_and_params):
  use = tool_decoding.ToolUse({})
  with pytest.raises(UserError, match='greedy or sampled'):
    tool_decoding.decode_with_tools(
      *model_and_params,
      np.ones((1, 4), np.int32),
      VOCAB,
      8,
      use,
      inference.DecodeConfig(method='beam', num_decodes=2),
    )


def test_steering_forces_tokens_pauses_on_a_stop_resumes_and_triggers_the_call_start():
  """decoding.resume on a step function whose favourite is token 5, then 7; the state
  counts the steps taken, so a resumed decode is seen to decode nothing again."""
  logits = jnp.zeros((2, 10)).at[:, 5].set(3.0).at[:, 7].set(2.0)
  step = lambda tokens, index, state: (logits, state + 1)
  forced = jnp.zeros((2, 6), jnp.int32).at[0, :2].set(jnp.array([9, 8]))
  stops = jnp.zeros((2, 10), bool).at[1, 5].set(True)
  steering = decoding.Steering(forced, jnp.array([2, 0]), stops, -1, 1, jnp.ones(2, bool))
  start = decoding.begin(jnp.zeros(()), 2, 6, jax.random.PRNGKey(0))
  paused = decoding.resume(step, start, eos_id=1, steering=steering)
  assert (int(paused.index), paused.paused.tolist()) == (1, [False, True])
  assert paused.tokens.tolist() == [[9, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0]]
  done = decoding.resume(step, paused, eos_id=1, steering=dataclasses.replace(steering, stops=None))
  assert done.tokens.tolist() == [[9, 8, 5, 5, 5, 5], [5, 5, 5, 5, 5, 5]]
  assert int(done.state) == 6  # one step per position, none repeated
  assert done.scores[0] == pytest.approx(4 * float(jax.nn.log_softmax(logits[0])[5]))
  assert done.scores[1] == pytest.approx(6 * float(jax.nn.log_softmax(logits[0])[5]))
  trigger = decoding.Steering(
    jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32), None, 7, 2, jnp.array([True, False])
  )
  start = decoding.begin(jnp.zeros(()), 2, 3, jax.random.PRNGKey(0))
  tokens = decoding.resume(step, start, eos_id=1, steering=trigger).tokens
  assert tokens.tolist() == [[7, 7, 7], [5, 5, 5]]


def test_infer_sh_with_tools_records_each_call(monkeypatch, prompt_run, tmp_path, capsys):
  """infer.sh's TOOLS on a trained run, its decoder scripted to write a call."""
  from tests.test_infer import _read
  from tests.test_infer import infer_in_process

  _scripted(monkeypatch, [SCRIPT[0]])
  (tmp_path / 'inputs.txt').write_text('cab\nhgf\n')
  tools = [
    "TOOLS = {'Calculator': @tools.calculator()}",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 40}",  # room for the call
  ]
  lines = _read(
    infer_in_process(
      tmp_path / 'out', tools, CHECKPOINT_PATH=prompt_run, INPUT_FILE=str(tmp_path / 'inputs.txt')
    )
  )
  assert [l['prediction'] for l in lines] == ['Sum: [Calculator(2+3) -> 5] done'] * 2
  assert lines[0]['prediction_without_calls'] == 'Sum: done'
  assert [c['text'] for c in lines[0]['calls']] == ['5'] and lines[0]['calls'][0]['error'] is None
  assert 'tool use (2 inputs decoded now): 1.00 calls/example, Calculator 100.0% of' in (
    capsys.readouterr().out
  )


@pytest.mark.parametrize(
  'bindings, message',
  [
    (["TOOLS = {'Calculator': @tools.calculator}"], r"TOOLS\['Calculator'\] = .* is not a tool"),
    (["TOOLS = {'C': @tools.calculator()}", 'TOOL_CALL_TOP_K = 0'], 'TOOL_CALL_TOP_K'),
    (
      ["TOOLS = {'C': @tools.calculator()}", "inference.DecodeConfig.method = 'beam'"],
      'one greedy or sampled decode',
    ),
    (["TOOLS = {'C': @tools.calculator()}", "ENSEMBLE = ['/x', '/y']"], 'ENSEMBLE does not take'),
    (["TOOLS = {'C': @tools.calculator()}", 'MAX_TOOL_CALLS = -1'], 'MAX_TOOL_CALLS'),
    (["TOOLS = {'C': @tools.calculator()}", "TOOL_CALL_STYLE = 'alpaca'"], "'inline'"),
    (["TOOLS = {'C': @tools.calculator()}", "tools.CallSyntax.arrow = '['"], 'must differ'),
  ],
)
def test_bad_tool_settings_stop_before_anything_loads(tmp_path, bindings, message):
  from tests.test_infer import infer_in_process

  macros = {} if any('ENSEMBLE' in b for b in bindings) else {'CHECKPOINT_PATH': '/nonexistent'}
  with pytest.raises(UserError, match=message):
    infer_in_process(tmp_path / 'out', bindings, INPUT_FILE=str(tmp_path / 'in.txt'), **macros)
  assert not (tmp_path / 'out').exists()


def test_eval_with_tools_scores_the_text_without_calls_and_counts_the_calls(
  monkeypatch, prompt_run, tmp_path
):
  """t5pt.eval's TOOLS: the trained model writes no call, so its metrics are those of eval
  without tools; scripted to call, each example's call is counted and logged."""
  import json

  from tests.test_eval import TASK
  from tests.test_eval import eval_in_process

  tools = {'TOOLS': "{'Calculator': @tools.calculator(), 'Calendar': @tools.calendar()}"}
  lengths = {'TASK_FEATURE_LENGTHS': {'inputs': 24, 'targets': 40}}  # room for the call
  plain = eval_in_process(tmp_path / 'plain', CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16, **lengths)
  with_tools = eval_in_process(
    tmp_path / 'tools', CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16, **lengths, **_gin(tools)
  )
  accuracy = with_tools[TASK]['sequence_accuracy']
  assert accuracy == pytest.approx(plain[TASK]['sequence_accuracy']) and accuracy > 50
  assert with_tools[TASK]['tools/calls_per_example'] == 0

  _scripted(monkeypatch, [SCRIPT[0], '[Calendar() -> ' + '?' * 40 + '] x', 'none', 'none'])
  scripted = eval_in_process(
    tmp_path / 'scripted', CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16, **lengths, **_gin(tools)
  )[TASK]
  assert scripted['tools/calls_per_example'] == 0.5  # a row in four calls each tool
  assert scripted['tools/Calculator/examples'] == scripted['tools/Calendar/examples'] == 25
  assert scripted['tools/Calculator/errors'] == scripted['tools/Calendar/errors'] == 0
  (logged,) = [json.loads(l) for l in open(tmp_path / 'scripted' / f'{TASK}-tool_use.jsonl')]
  assert logged['calls_per_example'] == pytest.approx(scripted['tools/calls_per_example'])
  (per_example,) = (tmp_path / 'scripted').glob(f'{TASK}-*-calls.jsonl')
  first = json.loads(per_example.read_text().splitlines()[0])
  assert first['prediction'] == 'Sum: [Calculator(2+3) -> 5] done'
  assert first['calls'][0]['text'] == '5'
  (predictions,) = (tmp_path / 'scripted').glob(f'{TASK}-*[0-9].jsonl')
  assert json.loads(predictions.read_text().splitlines()[0])['prediction'] == 'Sum: done'


def _gin(macros: dict) -> dict:
  """Macros whose values are gin text (tool references), for eval_in_process's repr()."""
  return {name: _GinText(text) for name, text in macros.items()}


class _GinText(str):
  def __repr__(self):
    return str(self)


@pytest.mark.slow
def test_on_two_hosts_process_0_runs_the_calls_and_both_force_its_results():
  """Two processes decode one global batch; `Who` answers with the process that ran it."""
  from tests.test_multihost import _finish
  from tests.test_multihost import _start_two

  outputs = _finish(_start_two('tests.two_hosts_tool_calls'))
  decoded = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  assert decoded[0] == decoded[1]
  (text, results), plain = decoded[0]
  assert results == ['process 0', '42']
  assert text == '[Who() -> process 0] then [Calculator(6*7) -> 42] end'
  assert plain == ['plain', []]


def test_a_prompt_run_as_a_tool_answers_as_that_run_decodes(monkeypatch, prompt_run, tmp_path):
  """TOOLS = {'Max': @tools.run()}, tools.run.path = the run: the main model (scripted, in batches of
  2) calls Max; the tool decodes on the base infer already loaded, as the run itself does."""
  from tasks import synthetic
  from t5pt.checkpoints import opening
  from t5pt.serving import run_tool
  from tests.test_infer import _read
  from tests.test_infer import infer_in_process

  question = synthetic.examples('synthetic_heldout_max', 'validation')[0][0]
  (tmp_path / 'q.txt').write_text(question + '\n')
  bases_read = []
  real_open_base = opening.open_base
  monkeypatch.setattr(
    opening, 'open_base', lambda *a, **k: bases_read.append(a) or real_open_base(*a, **k)
  )
  (alone,) = _read(
    infer_in_process(tmp_path / 'alone', CHECKPOINT_PATH=prompt_run, INPUT_FILE=f'{tmp_path}/q.txt')
  )
  answer = alone['prediction']
  reads_alone, bases_read[:] = len(bases_read), []
  _scripted(monkeypatch, [f'[Max({question}) -> ' + '?' * len(answer) + '] ok'], only_rows=2)
  lines = _read(
    infer_in_process(
      tmp_path / 'out',
      [
        "TOOLS = {'Max': @max/tools.run()}",
        f'max/tools.run.path = {prompt_run!r}',
        "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 60}",
        'BATCH_SIZE = 2',
      ],
      CHECKPOINT_PATH=prompt_run,
      INPUT_FILE=f'{tmp_path}/q.txt',
    )
  )
  assert lines[0]['prediction'] == f'[Max({question}) -> {answer}] ok'
  assert [(c['tool'], c['text'], c['error']) for c in lines[0]['calls']] == [('Max', answer, None)]
  assert len(bases_read) == reads_alone  # the tool read no base of its own
  # Not sharing (no base loaded yet), the tool loads its run's base itself: the same answer.
  monkeypatch.undo()
  assert run_tool.RunTool(prompt_run).call_batch([question, question]) == [answer, answer]


def test_a_run_tool_that_is_not_a_prompt_run_stops_before_anything_loads(tmp_path):
  from tests.test_infer import infer_in_process

  missing = str(tmp_path / 'missing')
  with pytest.raises(UserError, match=r'qa/tools.run.path = .*missing.*no such run'):
    infer_in_process(
      tmp_path / 'out',
      ["TOOLS = {'QA': @qa/tools.run()}", f'qa/tools.run.path = {missing!r}'],
      CHECKPOINT_PATH='/nonexistent',
      INPUT_FILE=str(tmp_path / 'in.txt'),
    )
  assert not (tmp_path / 'out').exists()


def test_infer_with_tools_resumes_and_refuses_other_tools(monkeypatch, prompt_run, tmp_path):
  """Interrupted after its first chunk, infer with TOOLS continues with the same tools into
  the file an uninterrupted run writes; with other tools (or another style) it refuses."""
  from t5pt.serving import infer_io
  from tests.test_infer import infer_in_process

  _scripted(monkeypatch, [SCRIPT[0], SCRIPT[1]])
  (tmp_path / 'in.txt').write_text('cab\nhgf\nabc\nfed\n')
  settings = [
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 40}",
    'BATCH_SIZE = 2',
    'batch_inference.infer.chunk_batches = 1',
  ]
  run = lambda out, *tools: infer_in_process(
    tmp_path / out,
    [*settings, *tools],
    CHECKPOINT_PATH=prompt_run,
    INPUT_FILE=str(tmp_path / 'in.txt'),
  )
  calculator_tools = "TOOLS = {'Calculator': @tools.calculator()}"
  whole = _untimed(run('whole', calculator_tools))
  real_write = infer_io.ChunkedOutput.write_chunk

  def first_then_die(self, index, lines):
    if index == 1:
      raise KeyboardInterrupt('simulated interruption')
    real_write(self, index, lines)

  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', first_then_die)
  with pytest.raises(KeyboardInterrupt):
    run('out', calculator_tools)
  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', real_write)
  for other in (
    ["TOOLS = {'Calc': @tools.calculator()}"],
    [calculator_tools, "TOOL_CALL_STYLE = 'inline'"],
  ):
    with pytest.raises(UserError, match='partial run with other settings'):
      run('out', *other)
  assert _untimed(run('out', calculator_tools)) == whole


def _untimed(path) -> list[dict]:
  """An output file's lines without the calls' milliseconds."""
  lines = [json.loads(line) for line in open(path)]
  for line in lines:
    for call in line['calls']:
      del call['milliseconds']
  return lines
