"""IA3 (Liu et al. 2022): `ia3_scale`, initialised to ones, multiplies the output of the
kernels `ia3_pattern` selects [out] or, for the MLP's `wo`, its input (the hidden
activation) [mlp], as HF PEFT does for T5. Setting: network.T5Config.ia3_pattern (a
kernel path regex, full match). Exports merged into the kernels of a transformers T5;
--peft_dir refuses it.
"""

import functools
import re
from typing import Optional

import flax.linen as nn
import gin
import jax.numpy as jnp
import numpy as np

from t5pt.model.methods import base
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError

IA3_SCALE = 'ia3_scale'
_BINDING = 'network.T5Config.ia3_pattern'
DEFAULT_IA3_PATTERN = base.ATTENTION + r'/(key|value)/kernel|.*/mlp/wo/kernel'
gin.constant('adapters.DEFAULT_IA3_PATTERN', DEFAULT_IA3_PATTERN)
_INPUT_SIDE = re.compile(r'.*/mlp/wo/kernel')


@functools.lru_cache(maxsize=None)
def side(pattern: Optional[str], kernel_path: str) -> Optional[str]:
  """'input', 'output' or None: where the IA3 scale of this kernel applies."""
  if not pattern or not base.compiled(pattern, _BINDING).fullmatch(kernel_path):
    return None
  return 'input' if _INPUT_SIDE.fullmatch(kernel_path) else 'output'


class IA3(base.Method):
  name = 'ia3'
  order = 20  # scales the output of the kernel with LoRA's term in it
  leaves = (IA3_SCALE,)
  hf_export = 'merge'

  def enabled(self, config) -> bool:
    return bool(config.ia3_pattern)

  def check(self, config) -> None:
    checks.string(config.ia3_pattern, _BINDING, optional=True)

  def check_kernels(self, config, kernel_paths) -> None:
    compiled = base.compiled(config.ia3_pattern, _BINDING)
    if not any(compiled.fullmatch(p) for p in kernel_paths):
      raise UserError(
        f'{_BINDING}: {config.ia3_pattern!r} matches no kernel. Kernel paths look like '
        f'{kernel_paths[0]!r}.'
      )

  def _scale(self, module, axis: str, size: int):
    scale = base.param(module, IA3_SCALE, nn.initializers.ones, (size,), (axis,))
    return jnp.asarray(scale, module.dtype)

  def dense_input(self, module, config, kernel_path, x):
    if side(config.ia3_pattern, kernel_path) != 'input':
      return x
    return x * self._scale(module, module.kernel_axes[0], x.shape[-1])

  def dense_output(self, module, config, kernel_path, x, y, deterministic):
    if side(config.ia3_pattern, kernel_path) != 'output':
      return y
    return y * self._scale(module, module.kernel_axes[1], y.shape[-1])

  def recognise(self, config, shapes, setting, path) -> dict:
    if any(k.endswith('/' + IA3_SCALE) for k in shapes) and not config.ia3_pattern:
      raise UserError(
        f'{setting}={path!r} holds IA3 scales: pass the ia3_pattern the t5x run used, e.g. '
        '--gin.network.T5Config.ia3_pattern="%adapters.DEFAULT_IA3_PATTERN".'
      )
    return {}

  def merge_kernel(self, config, kernel_path, kernel, params):
    where = side(config.ia3_pattern, kernel_path)
    scale_path = kernel_path[: -len('kernel')] + IA3_SCALE
    if not where or scale_path not in params:
      return kernel
    scale = np.asarray(params[scale_path], np.float32)
    return kernel * (scale[:, None] if where == 'input' else scale[None, :])

  def export_refusal(self, model_dir, owned):
    return (
      f'{model_dir} trained IA3 scales ({IA3_SCALE}), which '
      '--peft_dir does not export. Use --hf_dir: it merges them into the '
      'kernels of a transformers T5.'
    )


METHOD = IA3()
