"""Decoding with tools vs without, on one batch where every row calls once; and the latency
of each tool (issue 27).

Usage (from the repository root, inside the project's environment):

    python bench/tool_decoding.py [--size small|tiny] [--repeats 5] [--call_tool Calculator]

No trained model writes calls yet, so the model is a random T5 (`--size small`: T5 1.1-small
/ Flan-T5-small shapes as in bench/decode.py, vocab 32128, d_model 512, 6 heads x 64,
gated-GELU 1024, 8 + 8 layers; `--size tiny`: the same vocabulary, d_model 64, 2 + 2 layers)
whose REAL step function runs every step, its logits then overridden to follow a per-row
script: 1e4 is added at the scripted token (inference.step_functions wrapped, as
tests/test_tool_decoding.py does without the model). Row r writes, in T5's SentencePiece
vocabulary (--vocabulary),

    Out of 1400 participants, 400 (or [Calculator(400/1400) ->   (the call closes: a stop)
     0.29]                                                      (the result, written in)
     29%) passed the test.</s>

with different numbers in each row. With tools (`decode_with_tools`) the row stops at the
arrow, the calculator runs on the host and its result is forced in; without tools the same
script has the model write the result itself, so every way decodes the same tokens (the
script checks they are equal) and tokens/s compares like with like. Three ways:

  without tools      jax.jit(inference.predict_batch), what infer.sh runs without TOOLS
  tool path, no call decode_with_tools with max_calls=0 (one decode; its fixed costs)
  with tools         decode_with_tools, every row calls once

Batch 8, 128 random input ids. The ways run interleaved, one round after another, after one
untimed round (compilation and the vocabulary scan, cached per vocabulary by tool_decoding,
excluded; each way's first call is printed apart). Times are the median wall time of one
call over --repeats rounds; "x without tools" (and the cost of the calls, 1 - it) is the
median over the rounds of the ratio of the two ways' times in the same round, which a shared
machine's load shifts less than either time. decode_with_tools decodes every row in step
until one closes a call, pauses, runs the calls and resumes from the same cache: "decodes"
counts its jitted resumes (1 + the pauses). Outside them = total - time inside the resumes
(each timed until its output is ready), split into the encoder, the empty progress
(`begin`: a fresh cache), the tool calls (`run_calls`), the markers' vocabulary scan, and the rest
(steering arrays, fetching tokens, parsing the calls, writing the results in).

Tool latency: --tool_calls calls of each tool through base.run_call (its own milliseconds,
what infer records), after 3 untimed ones: Calculator (varied expressions), Retrieval (BM25
over --passages synthetic passages written to a temporary .jsonl), Calendar, and the Python
sandbox (--python_calls calls of a small snippet; if the sandbox cannot start here, the
script says why and goes on).
"""

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5pt.model import models  # noqa: E402
from t5pt.model import network  # noqa: E402
from t5pt.runtime import vocabularies  # noqa: E402
from t5pt.runtime.errors import UserError  # noqa: E402
from t5pt.serving import inference  # noqa: E402
from t5pt.serving import tool_decoding  # noqa: E402
from t5pt.tools import base  # noqa: E402
from t5pt.tools import calculator  # noqa: E402
from t5pt.tools import calendar  # noqa: E402
from t5pt.tools import retrieval  # noqa: E402
from t5pt.tools import sandbox  # noqa: E402
from t5pt.tools import syntax  # noqa: E402

BATCH, INPUTS = 8, 128
T5_VOCABULARY = ROOT.parent / 'shared' / 'interop' / 't5x_tiny' / 't5_vocab'
FORCE = 1.0e4  # added to the scripted token's logit: argmax follows the script
SIZES = {
  'small': dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, layers=8),
  'tiny': dict(emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, layers=2),
}
PYTHON_SNIPPET = 'print(sum(i * i for i in range(1000)))'


def model_and_params(size: str, max_length: int):
  shape = SIZES[size]
  config = network.T5Config(
    vocab_size=32128,
    emb_dim=shape['emb_dim'],
    num_heads=shape['num_heads'],
    head_dim=shape['head_dim'],
    mlp_dim=shape['mlp_dim'],
    num_encoder_layers=shape['layers'],
    num_decoder_layers=shape['layers'],
    mlp_activations=('gelu', 'linear'),
    logits_via_embedding=False,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
  )
  model = models.EncoderDecoderModel(config)
  return model, nn.unbox(model.init(jax.random.PRNGKey(0), INPUTS, max_length))


# The script.


def call_of(tool: str, row: int) -> tuple[str, str, str]:
  """(text before the call, the call's argument, text after its result) for `row`."""
  total, part = 1400 + 100 * row, 400 + 7 * row
  lead = f'Out of {total} participants, {part} (or'
  tail = f'{round(100 * part / total)}%) passed the test.'
  argument = {
    'Calculator': f'{part}/{total}',
    'Calendar': '',
    'Python': f'print({part}*100//{total})',
  }[tool]
  return lead, argument, tail


def scripts(vocabulary, tools: dict, tool: str) -> list[tuple[list[int], list[int], list[int]]]:
  """Per row, token ids (up to and including the arrow, the result suffix the runtime writes
  in, the rest and EOS). The result is the tool's own, run once here."""
  out = []
  for row in range(BATCH):
    lead, argument, tail = call_of(tool, row)
    result = base.run_call(tools, tool, argument)
    if result.error:
      raise SystemExit(f'{tool}({argument!r}) failed while writing the script: {result.text}')
    before = vocabulary.encode(
      f'{lead} {syntax.render_call(tool, argument)[:-1]} {syntax.TOOLFORMER.arrow}'
    )
    suffix = vocabulary.encode(syntax.result_suffix(result.text))
    after = vocabulary.encode(' ' + tail) + [inference.EOS_ID]
    call = syntax.pending_call(vocabulary.decode(before))
    if call is None or (call.name, call.argument) != (tool, argument):
      raise SystemExit(f'the script of row {row} does not close a {tool} call: {before}')
    out.append((before, suffix, after))
  return out


def script_steps(rows, max_length: int):
  """The step function wrapper: the real model runs, then argmax is made to follow `rows`."""
  ids = np.zeros((BATCH, max_length), np.int32)
  for row, (before, suffix, after) in enumerate(rows):
    ids[row, : len(before) + len(suffix) + len(after)] = before + suffix + after
  real = inference.step_functions

  def step_functions(model, params, encoded, encoder_tokens, prompt_mask, length, use_cache):
    state, step = real(model, params, encoded, encoder_tokens, prompt_mask, length, use_cache)
    table = jnp.asarray(ids)

    def scripted(tokens, index, state):
      logits, state = step(tokens, index, state)
      target = table[jnp.arange(tokens.shape[0]) % BATCH, jnp.minimum(index, max_length - 1)]
      return logits + FORCE * jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype), state

    return state, scripted

  return step_functions


# Instruments: decode_with_tools timed from outside (tool_decoding is not changed).


@dataclasses.dataclass
class Probe:
  encode_s: float = 0.0  # the jitted encoder
  begin_s: float = 0.0  # the empty progress (a fresh cache)
  decode_s: float = 0.0  # inside the jitted resumes, each timed until its output is ready
  decodes: int = 0  # resumes: 1 + the pauses
  paused_at: list = dataclasses.field(default_factory=list)  # (position, rows) per pause
  steps: int = 0  # decoder steps run (the position the last resume reached)
  scan_s: float = 0.0  # the call markers' vocabulary scan (cached per vocabulary)
  calls_s: float = 0.0  # run_calls: the tools on the host


PROBE = Probe()


def instrument() -> None:
  """Wraps tool_decoding's `_decode_fns` (whose encode/begin/resume are timed until their
  outputs are ready), `run_calls` and, where present, `_marker_tokens`; decode_with_tools
  looks each up in its module when it runs, so it runs the wrapped ones."""
  missing = [n for n in ('_decode_fns', 'run_calls') if not hasattr(tool_decoding, n)]
  if missing:
    raise SystemExit(
      f'tool_decoding has no {", ".join(missing)}: this bench follows its internals as of '
      '97c2531 (decode_with_tools pausing and resuming one cache); update instrument()'
    )

  def timed(fn, field, ready=False):
    def call(*args, **named):
      start = time.perf_counter()
      out = fn(*args, **named)
      if ready:
        jax.block_until_ready(out)
      setattr(PROBE, field, getattr(PROBE, field) + time.perf_counter() - start)
      return out

    return call

  decode_fns = tool_decoding._decode_fns

  def timed_decode_fns(*args, **named):
    fns = decode_fns(*args, **named)  # still cached by tool_decoding: nothing compiles again
    resume = timed(fns.resume, 'decode_s', ready=True)

    def counted_resume(*args, **named):
      progress = resume(*args, **named)
      PROBE.decodes += 1
      PROBE.steps = int(progress.index)
      paused = np.asarray(progress.paused)
      if paused.any():
        PROBE.paused_at.append((PROBE.steps, int(paused.sum())))
      return progress

    return fns._replace(
      encode=timed(fns.encode, 'encode_s', ready=True),
      begin=timed(fns.begin, 'begin_s', ready=True),
      resume=counted_resume,
    )

  tool_decoding._decode_fns = timed_decode_fns
  tool_decoding.run_calls = timed(tool_decoding.run_calls, 'calls_s')
  if hasattr(tool_decoding, '_marker_tokens'):
    tool_decoding._marker_tokens = timed(tool_decoding._marker_tokens, 'scan_s')


# Decoding with and without tools.


def bench_decoding(args, vocabulary, tools: dict) -> dict:
  rows = scripts(vocabulary, tools, args.call_tool)
  expected = [before + suffix + after[:-1] for before, suffix, after in rows]
  row_tokens = [len(e) + 1 for e in expected]  # with EOS, as bench/decode.py counts
  max_length = -(-(max(row_tokens) + 1) // 16) * 16
  model, params = model_and_params(args.size, max_length)
  inference.step_functions = script_steps(rows, max_length)
  instrument()
  inputs = np.random.default_rng(0).integers(3, 32000, (BATCH, INPUTS), dtype=np.int32)
  predict = jax.jit(lambda p, x: inference.predict_batch(model, p, x, max_length)[0])
  calls_on = tool_decoding.ToolUse({args.call_tool: tools[args.call_tool]})
  calls_off = dataclasses.replace(calls_on, max_calls=0)

  def with_tools(use):
    return lambda: tool_decoding.decode_with_tools(
      model, params, inputs, vocabulary, max_length, use
    )

  ways = {
    'without tools (predict_batch, jit)': lambda: np.asarray(predict(params, inputs))[:, 0],
    'tool path, calls off (max_calls=0)': with_tools(calls_off),
    'with tools, every row calls once': with_tools(calls_on),
  }
  results = {name: {'times': [], 'probes': []} for name in ways}
  for timed in (False,) + (True,) * args.repeats:
    for name, way in ways.items():
      PROBE.__init__()
      start = time.perf_counter()
      out = way()
      seconds = time.perf_counter() - start
      check(name, out, expected, args.call_tool)
      if timed:
        results[name]['times'].append(seconds)
        results[name]['probes'].append(dataclasses.replace(PROBE))
      else:
        results[name]['first_s'] = seconds
        results[name]['first_probe'] = dataclasses.replace(PROBE)
  return {
    'results': results,
    'row_tokens': row_tokens,
    'call_at': [len(before) for before, _, _ in rows],
    'result_tokens': [len(suffix) for _, suffix, _ in rows],
    'max_length': max_length,
  }


def check(name: str, out, expected: list[list[int]], tool: str) -> None:
  """Every way must decode the scripted tokens; with calls, each row one call, no error."""
  if isinstance(out, np.ndarray):
    got = [inference.until_eos(r) for r in out]
  else:
    got = [d.tokens for d in out]
    want_calls = 0 if 'calls off' in name else 1
    for d in out:
      if len(d.calls) != want_calls or any(c.error or c.tool != tool for c in d.calls):
        raise SystemExit(f'{name}: expected {want_calls} {tool} call a row, got {d.calls}')
  if got != expected:
    raise SystemExit(f'{name}: decoded {got[0]}, the script is {expected[0]}')


def report_decoding(args, measured: dict) -> None:
  results, tokens = measured['results'], sum(measured['row_tokens'])
  print(
    f'\n{args.size} shapes, batch {BATCH}, {INPUTS} input ids, max_length '
    f'{measured["max_length"]}, every row calls {args.call_tool} once; tokens per row '
    f'{measured["row_tokens"]} (arrow at token {measured["call_at"]}, result '
    f'{measured["result_tokens"]} tokens forced); median of {args.repeats} rounds after one '
    'untimed call (compilation excluded); x without tools: median over the rounds of '
    '(time without tools / time of the way) in the same round\n'
  )
  print(
    '| way | s / batch (min-max) | first call s | tokens/s | x without tools | decodes '
    '| decoder steps | in jitted decodes s | outside them s (share) | encoder s | begin s '
    '| tool calls s | vocabulary scan s | rest s |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  baseline = next(iter(results.values()))['times']
  paired = lambda times: float(np.median(np.array(baseline) / np.array(times)))
  med = lambda values: float(np.median(list(values)))
  for name, r in results.items():
    seconds, probes = med(r['times']), r['probes']
    field = lambda name: med(getattr(p, name) for p in probes)
    row = f'| {name} | {seconds:.3f} ({min(r["times"]):.2f}-{max(r["times"]):.2f}) | '
    row += f'{r["first_s"]:.2f} | {tokens / seconds:.0f} | {paired(r["times"]):.2f} | '
    if probes[0].decodes:
      pieces = ('encode_s', 'begin_s', 'calls_s', 'scan_s')
      outside = [t - p.decode_s for t, p in zip(r['times'], probes)]
      rest = [o - sum(getattr(p, f) for f in pieces) for o, p in zip(outside, probes)]
      row += (
        f'{probes[0].decodes} | {probes[0].steps} | {field("decode_s"):.3f} | '
        f'{med(outside):.3f} ({med(outside) / seconds:.0%}) | '
        + ' | '.join(f'{field(f):.3f}' for f in pieces)
        + f' | {med(rest):.3f} |'
      )
    else:
      row += f'1 jit | {max(measured["row_tokens"])} | - | - | - | - | - | - | - |'
    print(row)
  with_tools = results['with tools, every row calls once']
  ratios = np.array(baseline) / np.array(with_tools['times'])
  cost = 1 - float(np.median(ratios))
  first = [(name, r['first_probe'].scan_s) for name, r in results.items() if 'first_probe' in r]
  print(
    f'\ncost of the calls: {cost:.0%} of the throughput without tools (rounds: '
    f'{", ".join(f"{1 - x:.0%}" for x in ratios)}; goal: under 30%, '
    f'{"met" if cost < 0.30 else "NOT met"}); pauses with tools (position, rows that stopped): '
    f'{with_tools["probes"][0].paused_at}; vocabulary scan in the untimed first calls: '
    + ', '.join(f'{name} {s:.3f} s' for name, s in first if s)
  )


# Tool latency.


def synthetic_corpus(folder: Path, passages: int) -> tuple[Path, list[str]]:
  rng = random.Random(0)
  syllables = [a + b for a in 'bdfgklmnprstvz' for b in ('a', 'e', 'i', 'o', 'u', 'ai', 'ou')]
  lexicon = sorted({''.join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(5000)})
  path = folder / 'passages.jsonl'
  with path.open('w') as f:
    for i in range(passages):
      words = rng.choices(lexicon, k=rng.randint(40, 90))
      title = ' '.join(rng.choices(lexicon, k=2)).title()
      f.write(json.dumps({'title': f'{title} {i}', 'text': ' '.join(words) + '.'}) + '\n')
  return path, lexicon


def latency(tools: dict, name: str, arguments: list[str]) -> dict:
  for argument in arguments[:3]:
    base.run_call(tools, name, argument)
  results = [base.run_call(tools, name, a) for a in arguments]
  ms = np.array([r.milliseconds for r in results])
  errors = [r for r in results if r.error]
  return {
    'calls': len(results),
    'median_ms': float(np.median(ms)),
    'p95_ms': float(np.percentile(ms, 95)),
    'max_ms': float(ms.max()),
    'errors': len(errors),
    'example': f'{name}({arguments[0]!r}) -> {results[0].text[:60]!r}',
  }


def bench_tools(args, tools: dict, lexicon: list[str], index_s: float) -> None:
  rng = random.Random(1)
  n = args.tool_calls
  rows = {
    'Calculator': [
      f'({rng.randint(1, 9999)} + {rng.randint(1, 999)}) * {rng.randint(1, 99)} / '
      f'{rng.randint(1, 400)}'
      for _ in range(n)
    ],
    'Retrieval': [' '.join(rng.choices(lexicon, k=rng.randint(2, 5))) for _ in range(n)],
    'Calendar': [''] * n,
  }
  if 'Python' in tools:
    rows['Python'] = [PYTHON_SNIPPET] * args.python_calls
  print(
    '\n| tool | calls | median ms | p95 ms | max ms | errors | example |\n'
    '|---|---|---|---|---|---|---|'
  )
  for name, arguments in rows.items():
    r = latency(tools, name, arguments)
    print(
      f'| {name} | {r["calls"]} | {r["median_ms"]:.3f} | {r["p95_ms"]:.3f} | '
      f'{r["max_ms"]:.3f} | {r["errors"]} | `{r["example"]}` |'
    )
  print(f'Retrieval: {args.passages} passages, BM25 index built in {index_s:.1f} s')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', default='small', choices=sorted(SIZES))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument(
    '--call_tool', default='Calculator', choices=('Calculator', 'Calendar', 'Python')
  )
  parser.add_argument('--vocabulary', default=str(T5_VOCABULARY), help="T5's SentencePiece model")
  parser.add_argument('--tool_calls', type=int, default=200)
  parser.add_argument('--python_calls', type=int, default=40)
  parser.add_argument('--passages', type=int, default=10_000)
  parser.add_argument('--parts', default='decode,tools')
  args = parser.parse_args()
  if not os.path.exists(args.vocabulary):
    print(
      f"--vocabulary {args.vocabulary}: not found; pass T5's SentencePiece model (spiece.model)"
    )
    return 1
  vocabulary = vocabularies.sentencepiece(args.vocabulary)
  print(
    f'jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; '
    'load average %.2f %.2f %.2f' % os.getloadavg()
  )
  folder = Path(tempfile.mkdtemp(prefix='t5pt_tool_bench_'))
  try:
    corpus, lexicon = synthetic_corpus(folder, args.passages)
    start = time.perf_counter()
    tools = {
      'Calculator': calculator.Calculator(),
      'Calendar': calendar.Calendar(),
      'Retrieval': retrieval.Retrieval(corpus),
    }
    index_s = time.perf_counter() - start
    try:
      tools['Python'] = sandbox.Python()
    except UserError as e:
      print(f'the Python sandbox cannot start here, its rows are skipped: {e}')
    if 'decode' in args.parts:
      if args.call_tool not in tools:
        print(f'--call_tool {args.call_tool} is not available here')
        return 1
      report_decoding(args, bench_decoding(args, vocabulary, tools))
    if 'tools' in args.parts:
      bench_tools(args, tools, lexicon, index_s)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  print('load average after: %.2f %.2f %.2f' % os.getloadavg())
  return 0


if __name__ == '__main__':
  sys.exit(main())
