"""Parallel adapters (He et al. 2022, "Towards a Unified View of Parameter-Efficient
Transfer Learning"): a bottleneck beside a sublayer, added to its output,

    y = sublayer(x) + scale * relu(x down) up        down [embed, adapter], up [adapter, embed]

where x is the sublayer's (normed) input. The paper's best setting puts it beside the FFN
with scale 4; `up` starts at zero, so step 0 is the base model. Parameters:
`<layer>/<sublayer>_parallel_adapter/{down,up}`.

Settings (gin), in network.T5Config.methods:

    network.T5Config.methods = {'parallel_adapter': {'bottleneck_dim': 64, 'scale': 4.0}}

  bottleneck_dim  the adapter width (default 64)
  scale           s above (default 4.0)
  sublayers       where: 'mlp' (default), 'attention' (encoder), 'self_attention',
                  'encoder_decoder_attention' (decoder)

The ReLU keeps it out of any kernel and PEFT has no T5 parallel adapter, so export refuses
it: serve the run with t5pt.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from t5pt.model.methods import base
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError

SUBLAYERS = ('attention', 'self_attention', 'encoder_decoder_attention', 'mlp')
SUFFIX = '_parallel_adapter'
ADAPTER_AXIS = 'adapter'
_BINDING = "network.T5Config.methods['parallel_adapter']"


@dataclasses.dataclass(frozen=True)
class Settings:
  bottleneck_dim: int = 64
  scale: float = 4.0
  sublayers: tuple[str, ...] = ('mlp',)


def settings(config) -> Settings:
  values = config.method_settings('parallel_adapter') or {}
  names = {f.name for f in dataclasses.fields(Settings)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise UserError(f'{_BINDING}: unknown setting(s) {unknown}; the settings are {sorted(names)}.')
  return Settings(**values)


class _Bottleneck(nn.Module):
  bottleneck_dim: int
  scale: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: base.Array) -> base.Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    embed = x.shape[-1]
    # down as LoRA's A (torch's kaiming_uniform(a=sqrt(5))), up zero: the base at step 0.
    down_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    axes = ('embed', ADAPTER_AXIS)
    down = base.param(self, 'down', down_init, (embed, self.bottleneck_dim), axes)
    up = base.param(self, 'up', nn.initializers.zeros, (self.bottleneck_dim, embed), axes[::-1])
    h = nn.relu(jnp.dot(x.astype(self.dtype), jnp.asarray(down, self.dtype)))
    return self.scale * jnp.dot(h, jnp.asarray(up, self.dtype))


class ParallelAdapter(base.Method):
  name = 'parallel_adapter'
  order = 40
  leaves = ('down', 'up')
  pattern = rf'.*{SUFFIX}/(down|up)'
  axes = (ADAPTER_AXIS,)

  def enabled(self, config) -> bool:
    return config.method_settings('parallel_adapter') is not None

  def check(self, config) -> None:
    if not self.enabled(config):
      return
    s = settings(config)
    checks.integer(s.bottleneck_dim, f"{_BINDING}['bottleneck_dim']", 1)
    checks.positive_number(s.scale, f"{_BINDING}['scale']")
    for sublayer in s.sublayers:
      checks.choice(sublayer, f"{_BINDING}['sublayers']", SUBLAYERS)

  def sublayer_output(self, module, config, sublayer, x, y, deterministic):
    s = settings(config)
    if sublayer not in s.sublayers:
      return y
    adapter = _Bottleneck(s.bottleneck_dim, s.scale, y.dtype, name=sublayer + SUFFIX)
    return y + adapter(x).astype(y.dtype)

  def recognise(self, config, shapes, setting, path) -> dict:
    downs = sorted(k for k in shapes if self.owns(k) and k.endswith('/down'))
    if not downs:
      return {}
    width = shapes[downs[0]][1]
    if not self.enabled(config):
      raise UserError(
        f'{setting}={path!r} holds parallel adapters (bottleneck {width}), e.g. {downs[0]}. '
        f'Their scale is not in the checkpoint: bind the settings the run used, e.g. '
        f"--gin.network.T5Config.methods=\"{{'parallel_adapter': {{'bottleneck_dim': {width}, "
        "'scale': 4.0}}\"."
      )
    if settings(config).bottleneck_dim != width:
      raise UserError(
        f"{_BINDING}['bottleneck_dim'] = {settings(config).bottleneck_dim} in gin, but "
        f'{path} was trained with {width}; bind {width}.'
      )
    return {}

  def export_refusal(self, model_dir, owned):
    return (
      f'{model_dir} trained parallel adapters (e.g. {owned[0]}): their ReLU keeps them '
      'out of any kernel, and PEFT has no parallel adapter for T5, so neither --hf_dir nor '
      '--peft_dir can hold them; use the run with t5pt (infer.sh, t5pt.eval).'
    )


METHOD = ParallelAdapter()
