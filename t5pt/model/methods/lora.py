"""LoRA (Hu et al. 2021) on the dense kernels that `lora_rules` select: a kernel
W [in, out] gains lora_a [in, rank] (random) and lora_b [rank, out] (zero, so step 0 is
the base model):  y = x W + (alpha / rank) dropout(x) lora_a lora_b.

Settings: network.T5Config.lora_rules (LORA_RULES: (kernel path regex, rank, alpha)
triples, full match, the first match wins) and lora_dropout (LORA_DROPOUT). Exports as a
PEFT LORA adapter (each kernel with its own rank and alpha) or merged into the kernels of
a transformers T5. A t5x checkpoint holds the factors but not alpha: gin must give the
rules it was trained with.
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import gin
import jax.numpy as jnp
import numpy as np

from t5pt.model.methods import base
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError

LORA_A, LORA_B = 'lora_a', 'lora_b'
RANK_AXIS = 'lora_rank'

# Query and value of every attention: the LoRA paper's and HF PEFT's default for T5.
DEFAULT_LORA_RULES = ((base.ATTENTION + r'/(query|value)/kernel', 8, 16.0),)
gin.constant('adapters.DEFAULT_LORA_RULES', DEFAULT_LORA_RULES)

_BINDING = 'network.T5Config.lora_rules'


@dataclasses.dataclass(frozen=True)
class LoraRule:
  pattern: str
  rank: int
  alpha: float

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str):
  return base.compiled(pattern, _BINDING)


def rule_for(config, kernel_path: str) -> Optional[LoraRule]:
  """The first of `config.lora_rules` that fully matches `kernel_path`, if any."""
  for pattern, rank, alpha in config.lora_rules:
    if _compiled(pattern).fullmatch(kernel_path):
      return LoraRule(pattern, rank, float(alpha))
  return None


class Lora(base.Method):
  name = 'lora'
  order = 10
  leaves = (LORA_A, LORA_B)
  axes = (RANK_AXIS,)
  hf_export = 'merge'
  peft_type = 'LORA'

  def enabled(self, config) -> bool:
    return bool(config.lora_rules)

  def check(self, config) -> None:
    checks.number(config.lora_dropout, 'LORA_DROPOUT (network.T5Config.lora_dropout)', 0.0, 1.0)
    for rule in config.lora_rules:
      if len(rule) != 3:
        raise UserError(
          f'LORA_RULES = {list(config.lora_rules)!r}: each rule is (regex, rank, alpha).'
        )
      checks.regexes([rule[0]], 'LORA_RULES')
      checks.integer(rule[1], f'LORA_RULES rank of {rule[0]!r}', 1)
      checks.positive_number(rule[2], f'LORA_RULES alpha of {rule[0]!r}')

  def check_kernels(self, config, kernel_paths) -> None:
    for pattern, _, _ in config.lora_rules:
      if not any(_compiled(pattern).fullmatch(p) for p in kernel_paths):
        raise UserError(
          f'{_BINDING}: {pattern!r} matches no kernel. Kernel paths look like {kernel_paths[0]!r}.'
        )

  def dense_output(self, module, config, kernel_path, x, y, deterministic):
    rule = rule_for(config, kernel_path)
    if not rule:
      return y
    in_axis, out_axis = module.kernel_axes
    # A as torch's kaiming_uniform(a=sqrt(5)) (HF PEFT's choice); B zero.
    a_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    a = base.param(module, LORA_A, a_init, (x.shape[-1], rule.rank), (in_axis, RANK_AXIS))
    b_shape = (rule.rank, y.shape[-1])
    b = base.param(module, LORA_B, nn.initializers.zeros, b_shape, (RANK_AXIS, out_axis))
    h = nn.Dropout(config.lora_dropout)(x, deterministic=deterministic)
    h = jnp.dot(jnp.dot(h, jnp.asarray(a, module.dtype)), jnp.asarray(b, module.dtype))
    return y + (rule.scale * h).astype(y.dtype)

  def recognise(self, config, shapes, setting, path) -> dict:
    lora = sorted(k for k in shapes if k.endswith('/' + LORA_A))
    if lora and not config.lora_rules:
      raise UserError(
        f'{setting}={path!r} holds LoRA factors on {len(lora)} kernels (rank '
        f'{shapes[lora[0]][1]}), e.g. {lora[0]}. Its alpha is not in the checkpoint: pass '
        "the rules the t5x run used, e.g. gin/t5x/lora.gin's: "
        '--gin.network.T5Config.lora_rules=%adapters.DEFAULT_LORA_RULES'
      )
    return {}

  def merge_kernel(self, config, kernel_path, kernel, params):
    module = kernel_path[: -len('kernel')]
    rule = rule_for(config, kernel_path)
    if not rule or module + LORA_A not in params:
      return kernel
    a = np.asarray(params[module + LORA_A], np.float32)
    b = np.asarray(params[module + LORA_B], np.float32)
    return kernel + rule.scale * (a @ b)


METHOD = Lora()
