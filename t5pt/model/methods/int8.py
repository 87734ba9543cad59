"""The int8 base: a transform of the frozen base, not a tuning method. Every dense kernel
is int8 with a float32 `kernel_scale` [out] beside it (symmetric, per output column; the
numerics are in t5pt/model/quantization.py), quantised tensor by tensor while the base
loads. Setting: network.T5Config.int8_kernels (INT8_BASE). Trainable leaves stay float;
export dequantises the kernels (a float transformers T5)."""

import flax.linen as nn
import jax.numpy as jnp

from t5pt.model import quantization
from t5pt.model.methods import base
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError


class Int8Base(base.Method):
  name = 'int8'
  order = -10  # the stored kernel first: dequantised before adapters merge into it
  leaves = (quantization.KERNEL_SCALE,)
  transform = True  # TRAINABLE may not select its kernels and scales (run_setup checks)
  hf_export = 'merge'

  def enabled(self, config) -> bool:
    return bool(config.int8_kernels)

  def check(self, config) -> None:
    checks.boolean(config.int8_kernels, 'INT8_BASE (network.T5Config.int8_kernels)')

  def check_run(self, config, shapes, trainable_paths, base) -> None:
    if not base:
      raise UserError(
        'network.T5Config.int8_kernels quantises a loaded base; set '
        'INITIAL_CHECKPOINT_PATH (a random base has nothing to quantise).'
      )
    trained = [
      p
      for p in trainable_paths
      if jnp.dtype(shapes[p].dtype) == jnp.int8 or quantization.is_scale(p)
    ]
    if trained:
      raise UserError(
        f'TRAINABLE selects {trained[0]!r}, but with int8_kernels the kernels '
        'are frozen int8; train a prompt or adapters instead.'
      )

  def dense_kernel(self, module, config, shape, axes, init):
    kernel = module.param(
      'kernel', nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, jnp.int8
    )
    scale = base.param(
      module, quantization.KERNEL_SCALE, nn.initializers.ones, (shape[1],), (axes[1],)
    )
    return kernel, lambda y: y * jnp.asarray(scale, y.dtype)

  def merge_kernel(self, config, kernel_path, kernel, params):
    scale = params.get(quantization.scale_path(kernel_path))
    return kernel if scale is None else quantization.dequantize(kernel, scale)


METHOD = Int8Base()
