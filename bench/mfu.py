"""Model FLOPs utilisation: FLOPs of a compiled step, and the device's peak to divide by.

- FLOPs per step come from XLA's cost analysis of the compiled step (every matmul,
  attention score and element-wise op XLA will run, once per step). With activation
  rematerialisation on, that count includes the recomputed forward pass (hardware FLOPs,
  not model FLOPs); the benches run without remat unless told otherwise.
- The peak is measured on CPU (a float32 matmul timed in the same process, so a shared
  machine's load is in both numbers) and looked up on GPU/TPU (the vendor's published
  dense bf16 figure for the detected device kind).
"""

import time

import jax
import jax.numpy as jnp

# Dense (no sparsity) bf16 tensor-core / MXU peaks, FLOP/s, from the vendors' data sheets.
PUBLISHED_BF16_PEAK = {
  'H200': 989e12,
  'H100': 989e12,  # SXM; the PCIe card is 756e12
  'A100': 312e12,
  'L40S': 362e12,
  'L4': 121e12,
  'A10': 125e12,
  'RTX 4090': 165e12,
  'RTX 3090': 71e12,
  'TPU v6': 918e12,
  'TPU v5p': 459e12,
  'TPU v5 lite': 197e12,
  'TPU v4': 275e12,
}


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled (`jit(f).lower(...).compile()`) function."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per executable.
    analysis = analysis[0]
  return float(analysis.get('flops', 0.0))


def measured_matmul_peak(size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` [size, size] x [size, size] float32 matmuls."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def device_peak() -> tuple[float, str]:
  """(peak FLOP/s, where the figure comes from) for jax's first device."""
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return measured_matmul_peak(), 'measured float32 matmul, this run'
  for name, peak in PUBLISHED_BF16_PEAK.items():
    if name.lower() in device.device_kind.lower():
      return peak, f'published dense bf16 peak of {name}'
  return float('nan'), f'no published peak known for {device.device_kind!r}'


def utilisation(flops_per_step: float, steps_per_s: float, peak: float) -> dict:
  """The MFU columns of a bench row."""
  achieved = flops_per_step * steps_per_s
  return {
    'step_gflop': flops_per_step / 1e9,
    'achieved_tflop_s': achieved / 1e12,
    'peak_tflop_s': peak / 1e12,
    'mfu': achieved / peak,
  }
