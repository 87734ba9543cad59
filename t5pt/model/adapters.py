"""Parameter-efficient adapters: LoRA and IA3 on the dense kernels, and the leaf names of
deep prompts (per-layer key/value prefixes, built in layers.MultiHeadAttention).

Which kernels get an adapter is decided by regexes over parameter paths (full match),
e.g. 'encoder/layers_0/attention/query/kernel'; what is *trained* is still decided by
TRAINABLE, so prompt, LoRA and IA3 leaves are chosen in one place:

  LoRA (Hu et al. 2021)    kernel W [in, out] gains lora_a [in, rank] (random) and
                           lora_b [rank, out] (zero, so step 0 is the base model):
                           y = x W + (alpha / rank) dropout(x) lora_a lora_b
  IA3 (Liu et al. 2022)    ia3_scale, initialised to ones, multiplies the output of key and
                           value projections [joined_kv] and the input of the MLP's `wo`
                           (the hidden activation) [mlp], as HF PEFT does for T5.

`merge` folds LoRA and IA3 into the kernels (and drops their leaves) for inference at the
base model's cost; prefixes are attention inputs, not weights, so they stay.
"""

import dataclasses
import functools
import re
from typing import Mapping, Optional, Sequence

import numpy as np

import gin
from t5pt.model import quantization
from t5pt.runtime.errors import UserError

LORA_A, LORA_B, IA3_SCALE = 'lora_a', 'lora_b', 'ia3_scale'
PREFIX_KEY, PREFIX_VALUE = 'prefix_key', 'prefix_value'
MERGEABLE_LEAVES = (LORA_A, LORA_B, IA3_SCALE)
ADAPTER_LEAVES = MERGEABLE_LEAVES + (PREFIX_KEY, PREFIX_VALUE)
LORA_RANK_AXIS = 'lora_rank'

# Query and value of every attention (encoder, decoder self- and cross-attention): the
# LoRA paper's and HF PEFT's default for T5.
ATTENTION = (
  r'(encoder/layers_\d+/attention|decoder/layers_\d+/(self_attention|encoder_decoder_attention))'
)
DEFAULT_LORA_RULES = ((ATTENTION + r'/(query|value)/kernel', 8, 16.0),)
DEFAULT_IA3_PATTERN = ATTENTION + r'/(key|value)/kernel|.*/mlp/wo/kernel'
IA3_INPUT_SIDE = re.compile(r'.*/mlp/wo/kernel')
gin.constant('adapters.DEFAULT_LORA_RULES', DEFAULT_LORA_RULES)
gin.constant('adapters.DEFAULT_IA3_PATTERN', DEFAULT_IA3_PATTERN)


@dataclasses.dataclass(frozen=True)
class LoraRule:
  pattern: str
  rank: int
  alpha: float

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """lora_rules: (kernel path regex, rank, alpha) triples, the first match wins;
  ia3_pattern: kernel path regex for IA3 scales (None: no IA3)."""

  lora_rules: tuple = ()
  lora_dropout: float = 0.0
  ia3_pattern: Optional[str] = None

  def __post_init__(self):
    for rule in self.lora_rules:
      if len(rule) != 3 or not isinstance(rule[1], int) or rule[1] < 1:
        raise UserError(
          f'network.T5Config.lora_rules: {rule!r} should be (path regex, '
          'rank >= 1, alpha), e.g. (".*/attention/query/kernel", 8, 16).'
        )
      _compile(rule[0], 'network.T5Config.lora_rules')
    if self.ia3_pattern:
      _compile(self.ia3_pattern, 'network.T5Config.ia3_pattern')

  def lora(self, kernel_path: str) -> Optional[LoraRule]:
    for pattern, rank, alpha in self.lora_rules:
      if _compile(pattern).fullmatch(kernel_path):
        return LoraRule(pattern, rank, float(alpha))
    return None

  def ia3_side(self, kernel_path: str) -> Optional[str]:
    """'input', 'output' or None: where this kernel's IA3 scale applies."""
    if not self.ia3_pattern or not _compile(self.ia3_pattern).fullmatch(kernel_path):
      return None
    return 'input' if IA3_INPUT_SIDE.fullmatch(kernel_path) else 'output'


@functools.lru_cache(maxsize=None)
def _compile(pattern: str, binding: str = 'adapter rule') -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f'{binding}: {pattern!r} is not a valid regex ({e}).') from None


def is_adapter(path: str) -> bool:
  return path.rsplit('/', 1)[-1] in ADAPTER_LEAVES


def check_rules_match(config: AdapterConfig, kernel_paths: Sequence[str]) -> None:
  """Every LoRA rule and the IA3 pattern must select some kernel (else: a typo)."""
  patterns = [(r[0], 'network.T5Config.lora_rules') for r in config.lora_rules]
  if config.ia3_pattern:
    patterns.append((config.ia3_pattern, 'network.T5Config.ia3_pattern'))
  for pattern, binding in patterns:
    if not any(_compile(pattern).fullmatch(p) for p in kernel_paths):
      raise UserError(
        f'{binding}: {pattern!r} matches no kernel. Kernel paths look like {kernel_paths[0]!r}.'
      )


def merge(flat_params: Mapping[str, np.ndarray], config: AdapterConfig) -> dict[str, np.ndarray]:
  """Folds LoRA and IA3 into their kernels: {path: array} without their leaves.

  W' = W + (alpha / rank) A B, then IA3 scales the kernel's output columns or, for
  `mlp/wo`, its input rows. Changed kernels are computed and returned in float32; int8
  kernels come back dequantised (float32), so the result is a float model.
  """
  merged = {
    k: v
    for k, v in flat_params.items()
    if k.rsplit('/', 1)[-1] not in MERGEABLE_LEAVES and not quantization.is_scale(k)
  }
  for path in [k for k in merged if k.endswith('/kernel')]:
    module = path[: -len('kernel')]
    rule, side = config.lora(path), config.ia3_side(path)
    has_lora = bool(rule) and module + LORA_A in flat_params
    has_ia3 = bool(side) and module + IA3_SCALE in flat_params
    scale = flat_params.get(quantization.scale_path(path))
    if scale is not None:
      merged[path] = quantization.dequantize(merged[path], scale)
    if not (has_lora or has_ia3):
      continue
    kernel = np.asarray(merged[path], np.float32)
    if has_lora:
      a = np.asarray(flat_params[module + LORA_A], np.float32)
      b = np.asarray(flat_params[module + LORA_B], np.float32)
      kernel = kernel + rule.scale * (a @ b)
    if has_ia3:
      scale = np.asarray(flat_params[module + IA3_SCALE], np.float32)
      kernel = kernel * (scale[:, None] if side == 'input' else scale[None, :])
    merged[path] = kernel
  return merged
