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
  tool path, no call decode_with_tools with max_calls=0 (one segment; its fixed costs)
  with tools         decode_with_tools, every row calls once

and, as an illustration only, "with tools" again with the vocabulary scan of
tool_decoding._marker_tokens memoised here in the bench (what caching it would give).
Batch 8, 128 random input ids. The ways run interleaved, one round after another, after one
untimed round (compilation excluded; each way's first call is printed apart). Times are the
median wall time of one call over --repeats rounds; "x without tools" (and the cost of the
calls, 1 - it) is the median over the rounds of the ratio of the two ways' times in the same
round, which a shared machine's load shifts less than either time. Outside the segments =
total - time inside the jitted decode segments (each timed from when its inputs are ready),
split into the call markers' scan of the vocabulary, the encoder and set-up (to the first
segment), the tool calls, and the rest (parsing, transfers).

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


# Instruments: the decode path's pieces timed from outside (tool_decoding is not changed).


@dataclasses.dataclass
class Probe:
  segment_s: float = 0.0
  segments: int = 0
  steps: int = 0  # decoder steps the segments ran (the longest row of each)
  marker_s: float = 0.0
  encoder_s: float = 0.0  # from the end of the vocabulary scan to the first segment's start
  calls_s: float = 0.0
  scanned_at: float = 0.0

  def reset(self):
    for field in dataclasses.fields(self):
      setattr(self, field.name, field.default)


PROBE = Probe()


def instrument():
  """Times the pieces of decode_with_tools from outside by wrapping its module's helpers
  (tool_decoding itself is not changed). Tolerates the helpers it finds: the tool calls run
  through `run_calls` (newer) or the `_POOL` thread pool (older)."""
  segment_fn, marker_tokens = tool_decoding._segment_fn, tool_decoding._marker_tokens

  def timed_segment_fn(*args):
    segment = segment_fn(*args)

    def run(params, encoded, *rest, **named):
      jax.block_until_ready(encoded)  # the encoder's work is not the segment's
      start = time.perf_counter()
      if PROBE.segments == 0:
        PROBE.encoder_s = start - PROBE.scanned_at
      out = jax.block_until_ready(segment(params, encoded, *rest, **named))
      PROBE.segment_s += time.perf_counter() - start
      PROBE.segments += 1
      tokens = np.asarray(out[0])
      PROBE.steps += int(max((np.flatnonzero(r)[-1] + 1 if r.any() else 0) for r in tokens))
      return out

    return run

  def timed(fn, field):
    def call(*args, **named):
      start = time.perf_counter()
      out = fn(*args, **named)
      setattr(PROBE, field, getattr(PROBE, field) + time.perf_counter() - start)
      return out

    return call

  def scan(*args, **named):
    out = timed(marker_tokens, 'marker_s')(*args, **named)
    PROBE.scanned_at = time.perf_counter()
    return out

  tool_decoding._segment_fn = timed_segment_fn
  tool_decoding._marker_tokens = scan
  if hasattr(tool_decoding, 'run_calls'):
    tool_decoding.run_calls = timed(tool_decoding.run_calls, 'calls_s')
  elif hasattr(tool_decoding, '_POOL'):
    pool = tool_decoding._POOL

    class TimedPool:
      def map(self, fn, items):
        return timed(lambda: list(pool.map(fn, items)), 'calls_s')()

    tool_decoding._POOL = TimedPool()
  return marker_tokens


# Decoding with and without tools.


def bench_decoding(args, vocabulary, tools: dict) -> dict:
  rows = scripts(vocabulary, tools, args.call_tool)
  expected = [before + suffix + after[:-1] for before, suffix, after in rows]
  row_tokens = [len(e) + 1 for e in expected]  # with EOS, as bench/decode.py counts
  max_length = -(-(max(row_tokens) + 1) // 16) * 16
  model, params = model_and_params(args.size, max_length)
  inference.step_functions = script_steps(rows, max_length)
  marker_tokens = instrument()
  inputs = np.random.default_rng(0).integers(3, 32000, (BATCH, INPUTS), dtype=np.int32)
  predict = jax.jit(lambda p, x: inference.predict_batch(model, p, x, max_length)[0])
  calls_on = tool_decoding.ToolUse({args.call_tool: tools[args.call_tool]})
  calls_off = dataclasses.replace(calls_on, max_calls=0)

  def with_tools(use):
    return lambda: tool_decoding.decode_with_tools(
      model, params, inputs, vocabulary, max_length, use
    )

  cache = {}  # one for all the calls of the way

  def memoised_scan():
    def scan(vocab, use):
      key = (id(vocab), use.syntax)
      if key not in cache:
        cache[key] = marker_tokens(vocab, use)
      PROBE.scanned_at = time.perf_counter()
      return cache[key]

    saved = tool_decoding._marker_tokens
    tool_decoding._marker_tokens = scan
    try:
      return with_tools(calls_on)()
    finally:
      tool_decoding._marker_tokens = saved

  ways = {
    'without tools (predict_batch, jit)': lambda: np.asarray(predict(params, inputs))[:, 0],
    'tool path, calls off (max_calls=0)': with_tools(calls_off),
    'with tools, every row calls once': with_tools(calls_on),
    'with tools, vocabulary scan memoised (bench-side, illustration)': memoised_scan,
  }
  results = {name: {'times': [], 'probes': []} for name in ways}
  for timed in (False,) + (True,) * args.repeats:
    for name, way in ways.items():
      PROBE.reset()
      start = time.perf_counter()
      out = way()
      seconds = time.perf_counter() - start
      check(name, out, expected, args.call_tool)
      if timed:
        results[name]['times'].append(seconds)
        results[name]['probes'].append(dataclasses.replace(PROBE))
      else:
        results[name]['first_s'] = seconds
  encoder = eager_encoder_seconds(model, params, inputs)
  return {
    'results': results,
    'row_tokens': row_tokens,
    'call_at': [len(before) for before, _, _ in rows],
    'result_tokens': [len(suffix) for _, suffix, _ in rows],
    'max_length': max_length,
    'encoder': encoder,
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


def eager_encoder_seconds(model, params, inputs) -> dict:
  """The encoder as decode_with_tools runs it (outside jit) and jitted, median of 5."""

  def encode(p, x):
    return model.module.apply({'params': p}, x, None, False, None, None, method=model.module.encode)

  jitted = jax.jit(encode)
  out = {}
  for name, fn in (('eager', encode), ('jit', jitted)):
    jax.block_until_ready(fn(params, inputs))
    times = []
    for _ in range(5):
      start = time.perf_counter()
      jax.block_until_ready(fn(params, inputs))
      times.append(time.perf_counter() - start)
    out[name] = float(np.median(times))
  return out


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
    '| way | s / batch (min-max) | first call s | tokens/s | x without tools | segments | decoder steps '
    '| in jitted segments s | outside them s (share) | vocabulary scan s | encoder + set-up s '
    '| tool calls s | rest s |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  baseline = next(iter(results.values()))['times']
  paired = lambda times: float(np.median(np.array(baseline) / np.array(times)))
  for name, r in results.items():
    seconds = float(np.median(r['times']))
    probes = r['probes']
    med = lambda values: float(np.median(list(values)))
    field = lambda name: med(getattr(p, name) for p in probes)
    pieces = ('marker_s', 'encoder_s', 'calls_s')
    outside = med(t - p.segment_s for t, p in zip(r['times'], probes))
    rest = med(
      t - p.segment_s - sum(getattr(p, f) for f in pieces) for t, p in zip(r['times'], probes)
    )
    row = f'| {name} | {seconds:.3f} ({min(r["times"]):.2f}-{max(r["times"]):.2f}) | '
    row += f'{r["first_s"]:.2f} | {tokens / seconds:.0f} | {paired(r["times"]):.2f} | '
    if probes[0].segments:
      row += (
        f'{probes[0].segments} | {probes[0].steps} | {field("segment_s"):.3f} | '
        f'{outside:.3f} ({outside / seconds:.0%}) | '
        + ' | '.join(f'{field(f):.3f}' for f in pieces)
        + f' | {rest:.3f} |'
      )
    else:
      row += f'1 jit | {max(measured["row_tokens"])} | - | - | - | - | - | - |'
    print(row)
  ratios = np.array(baseline) / np.array(results['with tools, every row calls once']['times'])
  cost = 1 - float(np.median(ratios))
  print(
    f'\ncost of the calls: {cost:.0%} of the throughput without tools (rounds: '
    f'{", ".join(f"{1 - x:.0%}" for x in ratios)}; goal: under 30%, '
    f'{"met" if cost < 0.30 else "NOT met"}); encoder alone: {measured["encoder"]["eager"]:.3f} '
    f's outside jit, {measured["encoder"]["jit"]:.3f} s jitted (decode_with_tools runs it '
    f'{"jitted" if hasattr(tool_decoding, "_encode_fn") else "outside jit"})'
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
