"""Decoding speed: t5pt greedy and beam search, with and without the KV cache, vs HF
transformers `generate()` on the same weights and batch.

Usage (from the repository root, inside the test environment, which has the peer):

    python bench/decode.py [--repeats 3] [--dtype float32|bfloat16] [--frameworks jax,torch]

A random HF T5 with T5 1.1-small / Flan-T5-small shapes (vocab 32128, d_model 512, 6 heads
x 64, gated-GELU 1024, 8 + 8 layers, untied lm_head) is saved once with save_pretrained;
t5pt imports that folder through its checkpoint converter, so both sides decode the same
weights. Batch 8, 128 input tokens (random ids, no padding), 32 new tokens per sequence,
beam search with 4 beams (alpha 0 / length_penalty 0). Every sequence is decoded to the
full 32 tokens (random weights almost never emit EOS; HF is held there by
min_new_tokens). tokens/s = batch x generated tokens / median wall time of one call,
after one untimed call that compiles (jax) or warms up (torch). Each row runs in its own
subprocess, so its peak RSS (CPU) or peak device memory (GPU) is its own.
"""

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH, INPUTS, NEW_TOKENS, BEAMS = 8, 128, 32, 4
HF_CONFIG = dict(
  vocab_size=32128,
  d_model=512,
  d_kv=64,
  num_heads=6,
  d_ff=1024,
  num_layers=8,
  num_decoder_layers=8,
  feed_forward_proj='gated-gelu',
  tie_word_embeddings=False,
  decoder_start_token_id=0,
  pad_token_id=0,
  eos_token_id=1,
)
WORKERS = (
  'jax-greedy-cache',
  'jax-greedy-nocache',
  'jax-beam-cache',
  'jax-beam-nocache',
  'torch-greedy-cache',
  'torch-beam-cache',
)


def make_inputs(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, 32000, (BATCH, INPUTS), dtype=np.int32)


def save_model(folder: Path) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG))
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.04)
  model.save_pretrained(folder)


def median_time(call, repeats: int) -> tuple[float, object]:
  out = call()  # Compile / warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def rss_peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jax(name: str, folder: Path, args) -> dict:
  import functools  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(ROOT))
  from t5pt.checkpoints import opening  # pylint: disable=import-outside-toplevel
  from t5pt.model import models
  from t5pt.model import network
  from t5pt.serving import inference

  config, params = opening.load_model(str(folder), network.T5Config(dtype=args.dtype))
  beam = 'beam' in name
  decode = inference.DecodeConfig(
    method='beam' if beam else 'greedy',
    num_decodes=BEAMS if beam else 1,
    alpha=0.0,
    use_cache=name.endswith('-cache'),
  )
  fn = jax.jit(
    functools.partial(
      inference.predict_batch,
      models.EncoderDecoderModel(config),
      max_length=NEW_TOKENS,
      config=decode,
    )
  )
  tokens = jnp.asarray(make_inputs())
  seconds, (out, _) = median_time(lambda: jax.block_until_ready(fn(params, tokens)), args.repeats)
  best = np.asarray(out)[:, 0]
  generated = int(sum(np.argmax(row == 1) + 1 if (row == 1).any() else len(row) for row in best))
  device = jax.devices()[0]
  memory = (
    rss_peak_mib()
    if device.platform == 'cpu'
    else device.memory_stats()['peak_bytes_in_use'] / 2**20
  )
  return {
    'seconds': seconds,
    'generated': generated,
    'peak_mib': memory,
    'device': device.device_kind,
    'version': f'jax {jax.__version__}',
    'first_tokens': best[0, :8].tolist(),
  }


def run_torch(name: str, folder: Path, args) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  dtype = torch.bfloat16 if args.dtype == 'bfloat16' else torch.float32
  model = (
    transformers.T5ForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
  )
  ids = torch.tensor(make_inputs(), dtype=torch.long, device=device)
  beams = BEAMS if 'beam' in name else 1

  def call():
    with torch.no_grad():
      out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        num_beams=beams,
        do_sample=False,
        length_penalty=0.0,
        use_cache=True,
      )
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  seconds, out = median_time(call, args.repeats)
  memory = rss_peak_mib() if device == 'cpu' else torch.cuda.max_memory_allocated() / 2**20
  return {
    'seconds': seconds,
    'generated': int((out[:, 1:] != 0).sum()),
    'peak_mib': memory,
    'device': device,
    'version': f'torch {torch.__version__}',
    'first_tokens': out[0, 1:9].tolist(),
  }


def spawn(name: str, folder: Path, args) -> dict:
  command = [
    sys.executable,
    __file__,
    '--worker',
    name,
    '--folder',
    str(folder),
    '--repeats',
    str(args.repeats),
    '--dtype',
    args.dtype,
  ]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith('{')]
  if result.returncode or not lines:
    print(f'{name} failed:\n{result.stderr[-2000:]}')
    return {}
  return {'worker': name, **json.loads(lines[-1])}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--frameworks', default='jax,torch')
  parser.add_argument('--worker', choices=WORKERS, help=argparse.SUPPRESS)
  parser.add_argument('--folder', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    run = run_jax if args.worker.startswith('jax') else run_torch
    print(json.dumps(run(args.worker, Path(args.folder), args)))
    return 0
  frameworks = args.frameworks.split(',')
  if 'torch' not in frameworks or not importlib.util.find_spec('transformers'):
    print(
      'the HF folder is written with transformers: run in the test environment '
      '(./launch.sh test sets it up)'
    )
    return 1
  folder = Path(tempfile.mkdtemp(prefix='t5pt_decode_bench_'))
  try:
    save_model(folder)
    print(
      f'T5 1.1-small shapes, batch {BATCH}, inputs {INPUTS}, {NEW_TOKENS} new tokens, '
      f'beam {BEAMS}, dtype {args.dtype}, median of {args.repeats}; load average '
      '%.2f %.2f %.2f' % os.getloadavg()
    )
    rows = [
      r for name in WORKERS if name.split('-')[0] in frameworks if (r := spawn(name, folder, args))
    ]
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  print(
    '| framework | method | KV cache | s / batch | tokens/s | peak mem (MiB) | '
    'first tokens of row 0 |'
  )
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    framework, method, cache = r['worker'].split('-')
    print(
      f"| {'t5pt' if framework == 'jax' else 'HF generate'} | {method} | "
      f"{'yes' if cache == 'cache' else 'no'} | {r['seconds']:.3f} | "
      f"{r['generated'] / r['seconds']:.0f} | {r['peak_mib']:.0f} | "
      f"{r['first_tokens']} |"
    )
  by_name = {r['worker']: r for r in rows}
  for method in ('greedy', 'beam'):
    ours, peer = by_name.get(f'jax-{method}-cache'), by_name.get(f'torch-{method}-cache')
    nocache = by_name.get(f'jax-{method}-nocache')
    if ours and peer:
      print(
        f'{method}: t5pt / HF generate tokens/s x{peer["seconds"] / ours["seconds"]:.2f}'
        + (f'; cache speed-up x{nocache["seconds"] / ours["seconds"]:.2f}' if nocache else '')
      )
  print(f"devices: {sorted({r['device'] for r in rows})}; {sorted({r['version'] for r in rows})}")
  return 0 if len(rows) == len(WORKERS) else 1


if __name__ == '__main__':
  sys.exit(main())
