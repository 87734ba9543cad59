"""int8 frozen kernels: symmetric, per-output-channel, weight-only quantisation.

A frozen kernel W [in, out] is stored as q = round(W / s) in int8 with s = max|W[:, j]| / 127
per output column j (`kernel_scale` [out], float32), and used as x W ≈ (x q) * s: XLA fuses
the int8 -> activation-dtype convert into the matmul, so the float kernel never exists in
memory. Trainable leaves (prompt, adapters) stay float, and gradients reach them through
the dequantised product exactly as through a float kernel.

Why not qwix or aqtp: qwix (0.1.8) picks what to quantise by module path and op, not by
parameter, so it would also quantise the LoRA factors that live in the same Dense module
(making trainable leaves int8), and its quantised parameters are WithAux/QArray nodes that
checkpoint loading, sharding and export would all have to special-case. aqtp (0.9.0) does
not run on jax 0.10 (it calls the removed `jax.core.get_aval`) and keeps the float kernel
in its serving mode. The scheme here is the one both use for weight-only int8.
"""

import jax.numpy as jnp
import numpy as np

KERNEL_SCALE = 'kernel_scale'
INT8_MAX = 127


def scale_path(kernel_path: str) -> str:
  """'.../query/kernel' -> '.../query/kernel_scale'."""
  return kernel_path + '_scale'


def is_scale(path: str) -> bool:
  return path.endswith('/' + KERNEL_SCALE)


def quantize(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """kernel [in, out] float -> (int8 [in, out], float32 scale [out])."""
  kernel = np.asarray(kernel, np.float32)
  absmax = np.abs(kernel).max(axis=0)
  scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
  quantized = np.clip(np.rint(kernel / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
  return quantized, scale


def dequantize(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """The float32 kernel [in, out] that (int8 [in, out], scale [out]) stands for."""
  return np.asarray(quantized, np.float32) * np.asarray(scale, np.float32)[None, :]


def stored_tensors(name: str, array: np.ndarray, dtype) -> dict[str, np.ndarray]:
  """{name: array} as it is held in `dtype`: an int8 kernel comes back quantised, with its
  `kernel_scale` beside it; anything else unchanged (the caller casts)."""
  if jnp.dtype(dtype) != jnp.int8:
    return {name: array}
  quantized, scale = quantize(array)
  return {name: quantized, scale_path(name): scale}


def storage_dtype(path: str, declared: jnp.dtype, frozen_dtype: str) -> jnp.dtype:
  """The dtype a frozen leaf is held in: int8 kernels and their float32 scales as
  declared by the network, everything else in FROZEN_DTYPE."""
  if jnp.dtype(declared) == jnp.int8 or is_scale(path):
    return jnp.dtype(declared)
  return jnp.dtype(frozen_dtype)
