"""Deep prompts (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022): trained
keys and values [prompt, joined_kv] before every attention's own, `.../<attention>/
prefix_key` and `prefix_value`. Every query may attend to them; they get no position bias
and never enter the KV cache. Settings: network.T5Config.prefix_length (PREFIX_LENGTH,
encoder attention) and decoder_prefix_length (decoder self- and cross-attention). Neither
a PEFT adapter nor a transformers T5 holds them: export refuses."""

import flax.linen as nn
import jax.numpy as jnp

from t5pt.model.methods import base
from t5pt.runtime import checks

PREFIX_KEY, PREFIX_VALUE = 'prefix_key', 'prefix_value'
_FIELDS = {'encoder': 'prefix_length', 'decoder': 'decoder_prefix_length'}


def _length(module, config) -> int:
  """The prefix length of the attention `module`, by the side of the network it is in (an
  attention outside a network, as in tests, counts as the encoder's)."""
  side = module.path[0] if module.path else 'encoder'
  return getattr(config, _FIELDS[side]) if side in _FIELDS else 0


class DeepPrompt(base.Method):
  name = 'deep_prompt'
  order = 30
  leaves = (PREFIX_KEY, PREFIX_VALUE)
  axes = ('prompt',)

  def enabled(self, config) -> bool:
    return bool(config.prefix_length or config.decoder_prefix_length)

  def check(self, config) -> None:
    checks.integer(config.prefix_length, 'PREFIX_LENGTH (network.T5Config.prefix_length)', 0)
    checks.integer(config.decoder_prefix_length, 'network.T5Config.decoder_prefix_length', 0)

  def attention_kv(self, module, config, key, value, mask, bias):
    """Trained [P, heads, head_dim] keys/values before key/value [batch, kv_len, ...]."""
    length = _length(module, config)
    if not length:
      return key, value, mask, bias
    batch, _, heads, head_dim = key.shape
    init = nn.initializers.normal(1.0)

    def prefix(name, x):
      p = base.param(module, name, init, (length, heads * head_dim), ('prompt', 'joined_kv'))
      p = jnp.asarray(p, x.dtype).reshape((1, length, heads, head_dim))
      return jnp.concatenate([jnp.broadcast_to(p, (batch,) + p.shape[1:]), x], axis=1)

    key, value = prefix(PREFIX_KEY, key), prefix(PREFIX_VALUE, value)
    if mask is not None:
      mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (length,), mask.dtype), mask], axis=-1)
    if bias is not None:
      bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (length,), bias.dtype), bias], axis=-1)
    return key, value, mask, bias

  def recognise(self, config, shapes, setting, path) -> dict:
    lengths = {}
    for side, field in _FIELDS.items():
      found = [v[0] for k, v in shapes.items() if k.startswith(side) and k.endswith(PREFIX_KEY)]
      if found:
        lengths[field] = found[0]
    return lengths

  def export_refusal(self, model_dir, owned):
    return (
      f'{model_dir} trained deep-prompt prefixes (e.g. {owned[0]}), '
      'which neither a PEFT adapter t5pt writes nor a transformers T5 can '
      'hold; use the run with t5pt (infer.sh, t5pt.eval).'
    )


METHOD = DeepPrompt()
