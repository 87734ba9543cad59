"""What fits where: the memory planner over Flan-T5 small..XXL x {prompt, LoRA, full
fine-tuning} x {1, 2, 8 devices} x {float32, bfloat16, int8 frozen base}.

    python bench/plan_table.py [--out /tmp/plan_table.jsonl] [--sizes small,base]

Each (size, method, mesh) compiles the real train step once (t5pt.training.planner.Planner on
simulated CPU devices) with the gin file's settings: TASK_FEATURE_LENGTHS 512/128 with a
100-token prompt, BATCH_SIZE 32, bfloat16 activations. The frozen-base dtypes change the
bytes held (exact, from shapes and shardings), not the compile: the activation estimate is
the bfloat16 base's. Meshes: 1 device; 2 devices sharding the model (1x2: t5x's
parameter partitioning, the memory lever); 8 devices in data parallel (8x1: each device
holds the whole base and 4 of the 32 examples; up to large) and, for XL and XXL, sharding
the model (1x8). Results are appended to --out as JSON lines, so an interrupted run resumes; the
markdown table is printed at the end. Takes about 45 minutes on 2 CPU cores.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ('small', 'base', 'large', 'xl', 'xxl')
METHODS = {
  'prompt': ('prompt', []),
  'lora': ('lora', []),
  'full': ('prompt', ['PROMPT_LENGTH = 0', "TRAINABLE = ['.*']"]),
}
MESHES = {'1x1': (1, 1), '1x2': (1, 2), '8x1': (8, 1), '1x8': (1, 8)}
BUDGETS_GB = (16, 24, 40, 80)
GB = 1e9


def configs(sizes):
  """(size, method, mesh), the largest models first (they matter most)."""
  for size in sorted(sizes, key=SIZES.index, reverse=True):
    for method in METHODS:
      for mesh in MESHES:
        if mesh == '1x8' and size not in ('xl', 'xxl') or mesh == '8x1' and size in ('xl', 'xxl'):
          continue
        yield size, method, mesh


def plan_one(size: str, method: str, mesh_name: str) -> dict:
  import gin
  from t5pt.runtime import gin_utils
  from t5pt.training import planner as plan

  gin_name, bindings = METHODS[method]
  gin.clear_config()
  gin_utils.parse([f'gin/flan_t5_{size}_{gin_name}.gin'], bindings)
  settings = plan._train_bindings()
  data, model = MESHES[mesh_name]
  planner = plan.Planner(settings, plan.make_mesh(data * model, f'{data}x{model}', 1))
  setting = plan.Setting(settings['batch_size'], 1, 'none')
  held = planner.held_bytes(setting)
  row = dict(
    size=size,
    method=method,
    mesh=mesh_name,
    trainable=held['trainable'] + held['optimizer'],
    batch=held['batch'],
    activations=None,  # not compiled: the parameters alone exceed the largest budget
    cpu_activations=None,
    compile_seconds=0.0,
  )
  if held['frozen'] + row['trainable'] <= BUDGETS_GB[-1] * GB:
    result = planner.plan(setting, cpu_figure=False)
    row.update(
      activations=result.activations,
      cpu_activations=result.cpu_activations,
      compile_seconds=result.compile_seconds,
    )
  for name, frozen_dtype, int8 in (
    ('float32', 'float32', False),
    ('bfloat16', 'bfloat16', False),
    ('int8', 'bfloat16', True),
  ):
    if method == 'full' and name != 'float32':
      continue  # Full fine-tuning trains every parameter in float32.
    network_config = dataclasses.replace(planner.network_config, int8_kernels=int8)
    variant = plan.Planner(
      {**settings, 'network_config': network_config, 'frozen_dtype': frozen_dtype}, planner.mesh
    )
    row[f'frozen_{name}'] = variant.held_bytes(setting)['frozen']
  return row


def total(row: dict, base: str) -> float:
  activations = row['activations'] or 0  # None: not compiled, a lower bound
  return (row[f'frozen_{base}'] + row['trainable'] + row['batch'] + activations) / GB


def fits(gb: float) -> str:
  smallest = next((b for b in BUDGETS_GB if gb <= b), None)
  return f'{smallest} GB' if smallest else '> 80 GB'


def print_table(rows: list[dict]) -> None:
  print(
    '| size | method | mesh | frozen base | frozen GB | trainable + opt GB | activations GB '
    '(accelerator estimate) | total GB / device | fits |'
  )
  print('|---|---|---|---|---|---|---|---|---|')
  for row in rows:
    for base in ('float32', 'bfloat16', 'int8'):
      if f'frozen_{base}' not in row:
        continue
      gb = total(row, base)
      if row['activations'] is None:
        print(
          f"| {row['size']} | {row['method']} | {row['mesh']} | {base} | "
          f"{row[f'frozen_{base}'] / GB:.2f} | {row['trainable'] / GB:.2f} | not compiled | "
          f'> {gb:.0f} | > 80 GB |'
        )
        continue
      print(
        f"| {row['size']} | {row['method']} | {row['mesh']} | {base} | "
        f"{row[f'frozen_{base}'] / GB:.2f} | {row['trainable'] / GB:.2f} | "
        f"{row['activations'] / GB:.2f} | {gb:.2f} | "
        f'{fits(gb)} |'
      )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='/tmp/plan_table.jsonl')
  parser.add_argument('--sizes', default=','.join(SIZES))
  args = parser.parse_args()
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path.insert(0, str(ROOT))
  os.chdir(ROOT)
  out = Path(args.out)
  done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  have = {(r['size'], r['method'], r['mesh']) for r in done}
  for key in configs(args.sizes.split(',')):
    if key in have:
      continue
    row = plan_one(*key)
    print(f'{key}: {row}', flush=True)
    with out.open('a') as f:
      f.write(json.dumps(row) + '\n')
    done.append(row)
  order = {key: i for i, key in enumerate(sorted(configs(SIZES), key=lambda k: SIZES.index(k[0])))}
  print_table(sorted(done, key=lambda r: order[(r['size'], r['method'], r['mesh'])]))
  return 0


if __name__ == '__main__':
  sys.exit(main())
