"""Host memory of importing a base model and exporting a trained run, vs the size on disk.

Usage (from the repository root, inside the test environment, which has the peer):

    python bench/checkpoint_io.py [--size base] [--workdir /tmp/t5pt_ckpt_bench]

1. Builds a random HF T5 with google/flan-t5-{size}'s shapes (transformers, float32) and
   saves it with `save_pretrained`; writes a t5pt run directory holding a 100-token prompt
   trained "on" it (random values; only the files matter here).
2. In a fresh subprocess each, measures peak RSS (VmHWM) minus the RSS right after the
   imports for:
     t5pt-import-f32   opening.load_model(folder), float32 parameters
     t5pt-import-bf16  the same, cast to bfloat16 while loading
     t5pt-export       exporting.export_hf(run, ...): base + run merged into an HF folder
     hf-load           transformers' T5ForConditionalGeneration.from_pretrained (the peer),
                       whose tensors are memory-mapped from the file: pages become
                       resident only when touched
     hf-load-touched   the same, then every weight read once (as a forward pass does)
   and reports each against the weights' size on disk. A loader holding two copies of
   the model shows a ratio near 2; t5pt's streaming reads should stay near 1 (import:
   the resident model itself) and near shard size / model size for export.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAN_SHAPES = {
  'small': dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8),
  'base': dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12),
  'large': dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24),
}
WORKERS = ('t5pt-import-f32', 't5pt-import-bf16', 't5pt-export', 'hf-load', 'hf-load-touched')


def rss_mib(field: str = 'VmRSS') -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  raise RuntimeError(field)


def make_inputs(workdir: Path, size: str) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(ROOT))
  from t5pt.checkpoints import run_checkpoints  # pylint: disable=import-outside-toplevel
  from t5pt.model import network

  torch.manual_seed(0)
  config = transformers.T5Config(
    vocab_size=32128,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    **FLAN_SHAPES[size],
  )
  model = transformers.T5ForConditionalGeneration(config)
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.03)
  model.save_pretrained(workdir / 'hf')
  d_model = FLAN_SHAPES[size]['d_model']
  saver = run_checkpoints.RunCheckpointer(str(workdir / 'run'))
  prompt = {
    'encoder': {
      'prompt': {'prompt': np.random.default_rng(0).normal(size=(100, d_model)).astype(np.float32)}
    }
  }
  saver.save(
    prompt,
    {'count': np.zeros((), np.int32)},
    run_checkpoints.RunMeta(
      step=1,
      trainable=('encoder/prompt/prompt',),
      batches_consumed=1,
      network_config=network.T5Config(prompt_length=100),
      initial_checkpoint_path=str(workdir / 'hf'),
    ),
  )
  saver.wait_until_finished()
  saver.close()


def run_worker(name: str, workdir: Path, shard_mib: int) -> dict:
  sys.path.insert(0, str(ROOT))
  if name.startswith('t5pt'):
    import jax  # pylint: disable=import-outside-toplevel
    from t5pt.checkpoints import exporting  # pylint: disable=import-outside-toplevel
    from t5pt.checkpoints import opening
  else:
    import transformers  # pylint: disable=import-outside-toplevel
  base_mib = rss_mib()
  start = time.perf_counter()
  if name.startswith('t5pt-import'):
    _, params = opening.load_model(
      str(workdir / 'hf'), dtype='bfloat16' if name.endswith('bf16') else 'float32'
    )
    jax.block_until_ready(params)
  elif name == 't5pt-export':
    out = workdir / 'exported'
    shutil.rmtree(out, ignore_errors=True)
    run = opening.open_run(str(workdir / 'run'))
    exporting.export_hf(run, str(out), run.base_path(None), max_shard_bytes=shard_mib << 20)
  else:
    model = transformers.T5ForConditionalGeneration.from_pretrained(workdir / 'hf')
    if name == 'hf-load-touched':  # Page every weight in, as the first forward pass does.
      sum(float(p.detach().sum()) for p in model.parameters())
    del model
  return {
    'worker': name,
    'seconds': time.perf_counter() - start,
    'base_mib': base_mib,
    'peak_mib': rss_mib('VmHWM'),
  }


def spawn(name: str, workdir: Path, shard_mib: int) -> dict:
  result = subprocess.run(
    [
      sys.executable,
      __file__,
      '--worker',
      name,
      '--workdir',
      str(workdir),
      '--shard_mib',
      str(shard_mib),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  lines = [l for l in result.stdout.splitlines() if l.startswith('{')]
  if result.returncode or not lines:
    raise RuntimeError(f'{name} failed:\n{result.stderr[-3000:]}')
  return json.loads(lines[-1])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', default='base', choices=sorted(FLAN_SHAPES))
  parser.add_argument('--workdir', default='/tmp/t5pt_checkpoint_io_bench')
  parser.add_argument(
    '--shard_mib',
    type=int,
    default=256,
    help='largest exported safetensors shard (export --max_shard_size)',
  )
  parser.add_argument('--worker', choices=WORKERS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  workdir = Path(args.workdir)
  if args.worker:
    print(json.dumps(run_worker(args.worker, workdir, args.shard_mib)))
    return 0
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir(parents=True)
  make_inputs(workdir, args.size)
  disk_mib = sum(f.stat().st_size for f in (workdir / 'hf').glob('*.safetensors')) / 2**20
  print(
    f'flan-t5-{args.size} shapes, float32 safetensors on disk: {disk_mib:.0f} MiB; '
    f'export shards <= {args.shard_mib} MiB'
  )
  print(
    '| operation | seconds | RSS after imports (MiB) | peak RSS (MiB) | peak - imports '
    '(MiB) | / size on disk |'
  )
  print('|---|---|---|---|---|---|')
  for name in WORKERS:
    r = spawn(name, workdir, args.shard_mib)
    grown = r['peak_mib'] - r['base_mib']
    print(
      f"| {name} | {r['seconds']:.1f} | {r['base_mib']:.0f} | {r['peak_mib']:.0f} | "
      f'{grown:.0f} | {grown / disk_mib:.2f} |',
      flush=True,
    )
  exported = sum(f.stat().st_size for f in (workdir / 'exported').glob('*.safetensors'))
  print(
    f'exported HF folder: {exported / 2**20:.0f} MiB in '
    f"{len(list((workdir / 'exported').glob('*.safetensors')))} shard(s)"
  )
  shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
