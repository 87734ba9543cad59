"""What a tuning method declares, and the insertion points where the network calls it.

A method is one module in this package holding one `Method` subclass instance named
`METHOD`. The network never names a method: at each insertion point it calls every
method the config enables, in `order`:

  embedded_input     the embedded encoder input [batch, length, embed] (soft prompt)
  dense_kernel       the frozen kernel of every dense layer (a transform of the base,
                     such as int8: how the kernel is stored and multiplied)
  dense_input        a dense layer's input [..., in] before the matmul (IA3 on mlp/wo)
  dense_output       a dense layer's output [..., out]: attention query/key/value/out, MLP
                     wi/wo, logits (LoRA, IA3)
  attention_kv       an attention's keys and values [batch, kv_len, heads, head_dim] with
                     their mask and bias (deep prompts)
  sublayer_output    an attention or MLP sublayer's output [batch, length, embed] before
                     the residual add, given the sublayer's (normed) input (adapters)

Besides the computation a method declares its settings (fields of network.T5Config, or
`T5Config.methods[name]` for methods added later), the leaves it adds and their logical
axes, what trains by default, its checks, how it leaves t5pt (merged into kernels, a PEFT
adapter type, or a refusal that says why), and how its shapes are recognised in a
checkpoint written by another runner (t5x).
"""

import re
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5pt.runtime.errors import UserError

Array = jax.Array
Shapes = Mapping[str, tuple[int, ...]]

# Every attention's module path (encoder, decoder self- and cross-attention), for rules.
ATTENTION = (
  r'(encoder/layers_\d+/attention|decoder/layers_\d+/(self_attention|encoder_decoder_attention))'
)


def param(module: nn.Module, name: str, init, shape: tuple[int, ...], axes: tuple[str, ...]):
  """Declares a float32 parameter of `module` annotated with its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def leaf_pattern(leaves: Sequence[str]) -> str:
  """A TRAINABLE regex for every parameter whose leaf name is in `leaves`."""
  return f'.*/({"|".join(leaves)})' if len(leaves) > 1 else f'.*/{leaves[0]}'


class Method:
  """A tuning method (or a transform of the frozen base). Subclasses override what they
  use; the defaults add nothing and change nothing."""

  name: str = ''
  order: int = 0  # where it runs among the methods at one insertion point (low first)
  leaves: tuple[str, ...] = ()  # leaf names of the parameters it adds
  pattern: str = ''  # regex (full match) of their paths; by default any path ending in a leaf
  axes: tuple[str, ...] = ()  # logical axes of its own (replicated; t5x does not factor them)
  must_train: bool = True  # its leaves cannot be frozen (a base checkpoint has none)
  transform: bool = False  # a transform of the frozen base (its leaves are the base's)
  # How `python -m t5pt.export` takes it out: 'merge' folds it into the kernels of a
  # transformers T5 (`merge_kernel`); a PEFT type ('LORA', 'PROMPT_TUNING') is an adapter.
  hf_export: Optional[str] = None
  peft_type: Optional[str] = None

  # -- settings ---------------------------------------------------------------------------
  def enabled(self, config) -> bool:
    raise NotImplementedError

  def check(self, config) -> None:
    """Checks every setting of the method (a UserError naming the binding)."""

  def check_kernels(self, config, kernel_paths: Sequence[str]) -> None:
    """Checks the settings against the network's dense kernel paths (e.g. a rule that
    matches none)."""

  @property
  def path_pattern(self) -> str:
    return self.pattern or leaf_pattern(self.leaves)

  def check_run(self, config, shapes, trainable_paths: Sequence[str], base) -> None:
    """Checks a training run being set up: its tree (`shapes` {path: ShapeDtypeStruct}),
    what TRAINABLE selects, and its base (a path, or None for a random base)."""

  def trainable(self, config) -> tuple[str, ...]:
    """TRAINABLE regexes of what the method adds, when TRAINABLE is not set."""
    return () if self.transform else (self.path_pattern,)

  def owns(self, path: str) -> bool:
    """Whether the parameter at `path` is one this method adds."""
    return not self.transform and re.fullmatch(self.path_pattern, path) is not None

  # -- insertion points (called inside the network's flax modules) -------------------------
  def embedded_input(self, module, config, x: Array, per_example: Optional[Array]) -> Array:
    return x

  def input_positions(self, config) -> int:
    """Positions `embedded_input` puts before the tokens."""
    return 0

  def dense_kernel(self, module, config, shape, axes, init):
    """(kernel, rescale) for a transform of the frozen base, None otherwise: `kernel`
    multiplies the input, `rescale(y)` corrects the product."""
    return None

  def dense_input(self, module, config, kernel_path: str, x: Array) -> Array:
    return x

  def dense_output(
    self, module, config, kernel_path: str, x: Array, y: Array, deterministic: bool
  ) -> Array:
    return y

  def attention_kv(self, module, config, key, value, mask, bias):
    return key, value, mask, bias

  def sublayer_output(
    self, module, config, sublayer: str, x: Array, y: Array, deterministic: bool
  ) -> Array:
    return y

  # -- checkpoints and export --------------------------------------------------------------
  def recognise(self, config, shapes: Shapes, setting: str, path: str) -> dict:
    """T5Config updates that a checkpoint's tuned shapes imply (a t5x run's), or a
    UserError when gin must supply what shapes cannot tell."""
    return {}

  def merge_kernel(
    self, config, kernel_path: str, kernel: np.ndarray, params: Mapping[str, np.ndarray]
  ) -> np.ndarray:
    """`kernel` [in, out] float32 with the method's leaves in `params` folded in."""
    return kernel

  def export_refusal(self, model_dir: str, owned: Sequence[str]) -> Optional[str]:
    """Why a run that trained `owned` (this method's leaves) has no PEFT adapter."""
    return None


def compiled(pattern: str, binding: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f'{binding}: {pattern!r} is not a valid regex ({e}).') from None
