"""Hugging Face `transformers` T5 <-> t5x: config fields, parameter names and layouts.

Pure mappings (no I/O). HF stores torch Linear weights as [out, in] and the relative
attention table as [buckets, heads]; t5x stores kernels as [in, out] and the table as
[heads, buckets]. Every 2-D tensor except the token embedding is therefore transposed,
in both directions. Neither side scales queries at run time (T5 folds 1/sqrt(d_kv)
into the query initialisation), so no values change.
"""

from typing import Mapping

from t5pt.model import network
from t5pt.runtime.errors import UserError

# HF activation name -> flax.linen activation used by layers.MlpBlock. HF 'gelu' is the
# exact erf GELU, which T5 never used; 'gated-gelu' means the tanh approximation.
_FROM_HF_ACTIVATION = {
  'gelu_new': 'gelu',
  'gelu_pytorch_tanh': 'gelu',
  'relu': 'relu',
  'silu': 'silu',
  'swish': 'silu',
}
_TO_HF_ACTIVATION = {'gelu': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}
LAYER_NORM_EPSILON = 1e-6


def architecture_from_hf(hf: Mapping, source: str) -> dict:
  """network.T5Config architecture fields stated by an HF T5 config.json."""
  if hf.get('model_type', 't5') != 't5':
    raise UserError(
      f'{source} is a {hf["model_type"]!r} model; t5pt reads T5 models '
      '(model_type "t5": t5-*, google/t5-v1_1-*, google/flan-t5-*).'
    )
  if abs(hf.get('layer_norm_epsilon', LAYER_NORM_EPSILON) - LAYER_NORM_EPSILON) > 1e-12:
    raise UserError(
      f'{source}: layer_norm_epsilon={hf["layer_norm_epsilon"]}, but the t5pt '
      f'network uses {LAYER_NORM_EPSILON} as every T5 release does.'
    )
  proj = hf.get('feed_forward_proj', 'relu')
  gated = proj.startswith('gated-')
  act = 'gelu_new' if proj == 'gated-gelu' else proj.split('-')[-1]
  if act not in _FROM_HF_ACTIVATION:
    raise UserError(
      f'{source}: feed_forward_proj={proj!r} is not supported; t5pt supports '
      f'{sorted(_FROM_HF_ACTIVATION)} (optionally "gated-").'
    )
  activation = _FROM_HF_ACTIVATION[act]
  # transformers < 5 used tie_word_embeddings=False to mean "T5 1.1: no output scaling,
  # separate lm_head"; transformers 5 writes that as scale_decoder_outputs.
  scaled = hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True) is not False)
  return dict(
    vocab_size=hf['vocab_size'],
    emb_dim=hf['d_model'],
    num_heads=hf['num_heads'],
    head_dim=hf['d_kv'],
    mlp_dim=hf['d_ff'],
    num_encoder_layers=hf['num_layers'],
    num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
    mlp_activations=(activation, 'linear') if gated else (activation,),
    logits_via_embedding=bool(scaled),
    relative_attention_num_buckets=hf.get('relative_attention_num_buckets', 32),
    relative_attention_max_distance=hf.get('relative_attention_max_distance', 128),
  )


def hf_config(cfg: network.T5Config) -> dict:
  """An HF config.json for `cfg` that transformers (4.x and 5.x) load as the same model."""
  acts = tuple(cfg.mlp_activations)
  gated = len(acts) == 2 and acts[1] == 'linear'
  if not (gated or len(acts) == 1) or acts[0] not in _TO_HF_ACTIVATION:
    raise UserError(f'mlp_activations={acts} has no transformers T5 equivalent.')
  proj = f'gated-{acts[0]}' if gated else _TO_HF_ACTIVATION[acts[0]]
  return {
    'architectures': ['T5ForConditionalGeneration'],
    'model_type': 't5',
    'vocab_size': cfg.vocab_size,
    'd_model': cfg.emb_dim,
    'd_kv': cfg.head_dim,
    'd_ff': cfg.mlp_dim,
    'num_heads': cfg.num_heads,
    'num_layers': cfg.num_encoder_layers,
    'num_decoder_layers': cfg.num_decoder_layers,
    'feed_forward_proj': proj,
    'tie_word_embeddings': bool(cfg.logits_via_embedding),
    'relative_attention_num_buckets': cfg.relative_attention_num_buckets,
    'relative_attention_max_distance': cfg.relative_attention_max_distance,
    'layer_norm_epsilon': LAYER_NORM_EPSILON,
    'dropout_rate': cfg.dropout_rate,
    'is_encoder_decoder': True,
    'pad_token_id': 0,
    'eos_token_id': 1,
    'decoder_start_token_id': 0,
    'initializer_factor': 1.0,
    'use_cache': True,
  }


def _mlp_names(cfg: network.T5Config) -> list[str]:
  n = len(cfg.mlp_activations)
  return ([f'wi_{i}' for i in range(n)] if n > 1 else ['wi']) + ['wo']


def parameter_names(cfg: network.T5Config) -> dict[str, str]:
  """{t5x parameter path: HF state-dict key} for every base parameter of `cfg`
  (the soft prompt has no HF counterpart)."""
  names = {network.EMBEDDING_PATH: 'shared.weight'}
  if not cfg.logits_via_embedding:
    names[network.LOGITS_PATH] = 'lm_head.weight'
  attention_kinds = {
    'encoder': [('attention', 'SelfAttention', 'pre_attention_layer_norm')],
    'decoder': [
      ('self_attention', 'SelfAttention', 'pre_self_attention_layer_norm'),
      ('encoder_decoder_attention', 'EncDecAttention', 'pre_cross_attention_layer_norm'),
    ],
  }
  for side, layers in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    names[f'{side}/relpos_bias/rel_embedding'] = (
      f'{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'
    )
    names[f'{side}/{side}_norm/scale'] = f'{side}.final_layer_norm.weight'
    for i in range(layers):
      ours, theirs = f'{side}/layers_{i}', f'{side}.block.{i}.layer'
      for j, (attention, hf_attention, norm) in enumerate(attention_kinds[side]):
        names[f'{ours}/{norm}/scale'] = f'{theirs}.{j}.layer_norm.weight'
        for proj, hf_proj in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
          names[f'{ours}/{attention}/{proj}/kernel'] = (
            f'{theirs}.{j}.{hf_attention}.{hf_proj}.weight'
          )
      j = len(attention_kinds[side])
      names[f'{ours}/pre_mlp_layer_norm/scale'] = f'{theirs}.{j}.layer_norm.weight'
      for w in _mlp_names(cfg):
        names[f'{ours}/mlp/{w}/kernel'] = f'{theirs}.{j}.DenseReluDense.{w}.weight'
  return names


def needs_transpose(path: str) -> bool:
  """Whether the t5x parameter at `path` is stored transposed by HF (see module doc)."""
  return path.endswith('/kernel') or path.endswith('/rel_embedding')


def kernel_modules(cfg: network.T5Config) -> dict[str, str]:
  """{t5x kernel path: HF module name} for every dense kernel of `cfg` (what LoRA adapts),
  e.g. 'encoder/layers_0/attention/query/kernel' -> 'encoder.block.0.layer.0.SelfAttention.q'."""
  return {
    path: key[: -len('.weight')]
    for path, key in parameter_names(cfg).items()
    if path.endswith('/kernel')
  }
