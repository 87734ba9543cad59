"""One frozen model, many prompts: K tasks through one mixed infer run vs K separate runs,
and a prompt ensemble vs its members.

Usage (from the repository root, inside the project's environment):

    python bench/many_prompts.py [--work_dir runs/many_prompts] [--examples 256]

Everything is made here, from nothing downloaded: the demo's tiny base (gin/demo/
base_tiny.gin), one prompt per synthetic held-out task (first, last, min, max: K = 4,
prompt lengths 8, 6, 5, 8 so that the mixed batches pad prompts), and three more prompts
for the max task trained briefly with different seeds (the ensemble). Runs already in
--work_dir are reused.

Mixed vs separate: --examples inputs of each task's validation split, interleaved in one
JSONL whose lines name their prompt, decoded by one `infer` with PROMPTS; and each task's
inputs decoded by its own `infer` with CHECKPOINT_PATH. Each infer runs in its own
subprocess (from a cold start: base load, compilation and decoding), so its wall time and
peak RSS are its own; the separate way's time is the sum of its K runs (run one after
another, its peak memory is their maximum). The outputs must agree line for line.

Peer: HF transformers + PEFT serving the same K prompts, exported with t5pt.export (the
base as an HF folder, each prompt as a PROMPT_TUNING adapter): one process loads the base
and the K adapters once, then `set_adapter` and greedy `generate` per task, batch by
batch (PEFT has no per-example prompt-tuning adapter inside one batch). Its predictions
must equal t5pt's.

Ensemble: t5pt.eval with ENSEMBLE over the three max prompts (vote, and score: rank
classification over the 8 letters), each member's exact match and the ensemble's.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import gin  # noqa: E402
import numpy as np  # noqa: E402

from t5pt.serving import batch_inference  # noqa: E402
from t5pt.serving import evaluation  # noqa: E402
from t5pt.checkpoints import exporting  # noqa: E402
from t5pt.checkpoints import opening  # noqa: E402
from t5pt.runtime import gin_utils  # noqa: E402
from t5pt.serving import inference  # noqa: E402
from t5pt.training import trainer  # noqa: E402
from tasks import synthetic  # noqa: E402

PROMPT_LENGTHS = {'first': 8, 'last': 6, 'min': 5, 'max': 8}
ENSEMBLE_SEEDS = (1, 2, 3)


def train(gin_file: str, model_dir: Path, **macros) -> str:
  if opening.is_run(str(model_dir)):
    return str(model_dir)
  gin.clear_config()
  gin_utils.parse(
    [gin_file], [f'MODEL_DIR = {str(model_dir)!r}'] + [f'{k} = {v!r}' for k, v in macros.items()]
  )
  try:
    trainer.train(progress_bar=False)
  finally:
    gin.clear_config()
  return str(model_dir)


def make_runs(work: Path, args) -> tuple[str, dict, list]:
  base = train('gin/demo/base_tiny.gin', work / 'base', TRAIN_STEPS=args.base_steps)
  common = dict(INITIAL_CHECKPOINT_PATH=base, EVAL_PERIOD=10_000, INFER_EVAL=False)
  prompts = {
    op: train(
      'gin/t5_1_1_tiny_prompt.gin',
      work / f'prompt_{op}',
      MIXTURE_OR_TASK_NAME=f'synthetic_heldout_{op}',
      PROMPT_LENGTH=length,
      TRAIN_STEPS=args.prompt_steps,
      CHECKPOINT_PERIOD=args.prompt_steps,
      **common,
    )
    for op, length in PROMPT_LENGTHS.items()
  }
  members = [
    train(
      'gin/t5_1_1_tiny_prompt.gin',
      work / f'max_seed{seed}_steps{args.ensemble_steps}_p{args.ensemble_prompt_length}',
      SEED=seed,
      PROMPT_LENGTH=args.ensemble_prompt_length,
      TRAIN_STEPS=args.ensemble_steps,
      CHECKPOINT_PERIOD=args.ensemble_steps,
      **common,
    )
    for seed in ENSEMBLE_SEEDS
  ]
  return base, prompts, members


def write_jsonl(path: Path, records) -> str:
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def worker(job: dict) -> None:
  """One infer in this process, twice: cold (what a user's infer.sh run pays in t5pt: base
  load, compilation, decoding) and warm (again into another directory, its programs from
  the compilation cache the first pass filled); prints the times and the peak RSS as JSON."""
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='many-prompts-cache-'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  passes = []
  for output_dir in (job['output_dir'], job['output_dir'] + '-warm'):
    start = time.perf_counter()
    gin.clear_config()
    gin_utils.parse(['gin/infer.gin'], [f'INFER_OUTPUT_DIR = {output_dir!r}', *job['bindings']])
    passes.append((batch_inference.infer(progress_bar=False), time.perf_counter() - start))
  (path, cold), (_, warm) = passes
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print('RESULT ' + json.dumps({'path': path, 'seconds': cold, 'warm': warm, 'peak_mib': peak}))


def peft_worker(spec: dict) -> None:
  """The peer: K PEFT prompt adapters on one transformers T5, a task at a time."""
  import peft  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  base = transformers.T5ForConditionalGeneration.from_pretrained(
    spec['hf_dir'], dtype=torch.float32
  )
  adapters = spec['adapters']
  names = list(adapters)
  model = peft.PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
  for name in names[1:]:
    model.load_adapter(adapters[name], adapter_name=name)
  model.eval()
  vocabulary = synthetic.VOCABULARY
  times = []
  for _ in range(2):  # cold (with the loading above), then warm: generation alone
    predictions = {}
    with torch.no_grad():
      for name in names:
        model.set_adapter(name)
        predictions[name] = []
        texts = spec['inputs'][name]
        for i in range(0, len(texts), spec['batch_size']):
          rows = [list(vocabulary.encode(t)) + [1] for t in texts[i : i + spec['batch_size']]]
          ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
          for r, row in enumerate(rows):
            ids[r, : len(row)] = row
          out = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(ids > 0).long(),
            max_new_tokens=spec['max_length'],
            do_sample=False,
            num_beams=1,
          )
          for row in out.numpy()[:, 1:]:  # after the decoder's start token
            predictions[name].append(vocabulary.decode(inference.until_eos([t for t in row])))
    times.append(time.perf_counter() - start)
    start = time.perf_counter()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  result = {'predictions': predictions, 'seconds': times[0], 'warm': times[1], 'peak_mib': peak}
  print('RESULT ' + json.dumps(result))


def export_for_peft(work: Path, prompts: dict) -> tuple[str, dict]:
  """The base as an HF folder and each prompt as a PEFT adapter (made once)."""
  hf_dir = work / 'peft' / 'hf'
  first = opening.open_run(next(iter(prompts.values())))
  if not hf_dir.exists():
    exporting.export_hf(first, str(hf_dir), first.base_path(), 2 << 30)
  adapters = {}
  for name, run in prompts.items():
    adapters[name] = str(work / 'peft' / name)
    if not Path(adapters[name]).exists():
      exporting.export_peft_prompt(opening.open_run(run), adapters[name], str(hf_dir))
  return str(hf_dir), adapters


def spawn(job, flag: str = '--worker') -> dict:
  out = subprocess.run(
    [sys.executable, __file__, flag, json.dumps(job)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  for line in out.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[7:])
  raise RuntimeError(f'worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}')


def read(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def mixed_vs_separate(work: Path, prompts: dict, args) -> None:
  inputs = {
    op: synthetic.examples(f'synthetic_heldout_{op}', 'validation')[0][: args.examples]
    for op in prompts
  }
  mixed_records = [
    {'inputs': inputs[op][i], 'prompt': op} for i in range(args.examples) for op in prompts
  ]
  common = [f'BATCH_SIZE = {args.batch_size}']
  mixed_file = write_jsonl(work / 'mixed.jsonl', mixed_records)
  out = work / 'out'
  shutil.rmtree(out, ignore_errors=True)  # infer skips outputs that are already complete
  shutil.rmtree(work / 'peft', ignore_errors=True)
  mixed = spawn(
    {
      'output_dir': str(out / 'mixed'),
      'bindings': [*common, f'INPUT_FILE = {mixed_file!r}', f'PROMPTS = {prompts!r}'],
    }
  )
  separate = {}
  for op, run in prompts.items():
    source = write_jsonl(work / f'{op}.jsonl', [{'inputs': x} for x in inputs[op]])
    separate[op] = spawn(
      {
        'output_dir': str(out / op),
        'bindings': [*common, f'INPUT_FILE = {source!r}', f'CHECKPOINT_PATH = {run!r}'],
      }
    )
  hf_dir, adapters = export_for_peft(work, prompts)
  peer = spawn(
    {
      'hf_dir': hf_dir,
      'adapters': adapters,
      'inputs': {op: list(texts) for op, texts in inputs.items()},
      'batch_size': args.batch_size,
      'max_length': 10,
    },
    '--peft_worker',
  )
  mixed_lines = read(mixed['path'])
  agree = peer_agree = total = 0
  for op, result in separate.items():
    ours = [l['prediction'] for l in mixed_lines if l['prompt'] == op]
    theirs = [l['prediction'] for l in read(result['path'])]
    agree += sum(a == b for a, b in zip(ours, theirs))
    peer_agree += sum(a == b for a, b in zip(ours, peer['predictions'][op]))
    total += len(theirs)
  k, n = len(prompts), len(mixed_records)
  total_separate = {key: sum(r[key] for r in separate.values()) for key in ('seconds', 'warm')}
  total_separate['peak_mib'] = max(r['peak_mib'] for r in separate.values())
  print(
    f'\nK = {k} tasks x {args.examples} inputs = {n} lines, BATCH_SIZE {args.batch_size}, greedy'
  )
  print('| way | cold s | lines/s | warm s | lines/s | peak RSS MiB |')
  print('|---|---|---|---|---|---|')
  row = lambda name, r, lines: print(
    f'| {name} | {r["seconds"]:.2f} | {lines / r["seconds"]:.0f} | {r["warm"]:.2f} | '
    f'{lines / r["warm"]:.0f} | {r["peak_mib"]:.0f} |'
  )
  row('t5pt, one mixed run (PROMPTS)', mixed, n)
  row(f't5pt, {k} separate runs (sum; max)', total_separate, n)
  for op, r in separate.items():
    row(f'&nbsp;&nbsp;{op} alone', r, args.examples)
  row(f'HF + PEFT, {k} adapters, a task at a time', peer, n)
  for key, label in (('seconds', 'cold'), ('warm', 'warm')):
    print(
      f'{label}: separate / mixed {total_separate[key] / mixed[key]:.2f}x, '
      f'HF + PEFT / mixed {peer[key] / mixed[key]:.2f}x'
    )
  print(
    f"mixed predictions equal to the separate runs' {agree}/{total}, "
    f"to HF + PEFT's {peer_agree}/{total}"
  )


def ensemble_accuracy(work: Path, members: list[str], args) -> None:
  print(
    f'\nEnsemble of {len(members)} prompts for synthetic_heldout_max ({args.ensemble_steps} steps each)'
  )
  print(
    '| method | ' + ' | '.join(f'member {i + 1}' for i in range(len(members))) + ' | ensemble |'
  )
  print('|---|' + '---|' * (len(members) + 1))
  for method, options in (('vote', None), ('score', list(synthetic.ALPHABET))):
    gin.clear_config()
    bindings = [
      f'EVAL_OUTPUT_DIR = {str(work / "eval" / method)!r}',
      f'ENSEMBLE = {members!r}',
      f'ENSEMBLE_METHOD = {method!r}',
      f'ENSEMBLE_OPTIONS = {options!r}',
      f'BATCH_SIZE = {args.batch_size}',
    ]
    gin_utils.parse(['gin/eval.gin'], bindings)
    try:
      results = evaluation.evaluate()
    finally:
      gin.clear_config()
    accuracy = {
      label: r['synthetic_heldout_max']['sequence_accuracy'] for label, r in results.items()
    }
    cells = ' | '.join(f'{accuracy[label]:.1f}' for label in list(accuracy)[:-1])
    print(f'| {method} | {cells} | {accuracy["ensemble"]:.1f} |')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--work_dir', default='runs/many_prompts')
  parser.add_argument('--examples', type=int, default=256, help='inputs per task')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--base_steps', type=int, default=800)
  parser.add_argument('--prompt_steps', type=int, default=300)
  parser.add_argument('--ensemble_steps', type=int, default=100)
  parser.add_argument('--ensemble_prompt_length', type=int, default=1)
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--peft_worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(json.loads(args.worker))
    return 0
  if args.peft_worker:
    peft_worker(json.loads(args.peft_worker))
    return 0
  work = Path(args.work_dir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  os.chdir(ROOT)
  _, prompts, members = make_runs(work, args)
  mixed_vs_separate(work, prompts, args)
  ensemble_accuracy(work, members, args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
