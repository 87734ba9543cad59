"""Random transformers T5 models built from configs (no downloads) and t5pt counterparts."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from t5pt.model import models

COMMON = dict(
  vocab_size=64,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  decoder_start_token_id=0,
  pad_token_id=0,
  eos_token_id=1,
  dropout_rate=0.0,
)

# The variants the checkpoint issue asks for; each differs from T5 1.1 in one structural way.
CONFIGS = {
  't5_1_0_relu_tied': dict(
    feed_forward_proj='relu',
    tie_word_embeddings=True,
    d_model=16,
    d_kv=4,
    num_heads=4,
    d_ff=24,
    num_layers=2,
  ),
  'flan_t5_gated_untied': dict(
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    d_model=16,
    d_kv=4,
    num_heads=4,
    d_ff=24,
    num_layers=2,
  ),
  'heads_x_dkv_not_d_model': dict(
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    d_model=16,
    d_kv=6,
    num_heads=3,
    d_ff=20,
    num_layers=2,
  ),
  'encoder_3_decoder_1_layers': dict(
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    d_model=16,
    d_kv=4,
    num_heads=4,
    d_ff=24,
    num_layers=3,
    num_decoder_layers=1,
  ),
}


def make_hf_t5(kind: str, seed: int = 0, **overrides) -> transformers.T5ForConditionalGeneration:
  """A randomly initialised HF T5 with every parameter distinct: layer-norm scales are
  randomised (HF initialises them to 1, which would hide a mis-mapped norm) and an untied
  lm_head gets its own values (transformers 5 ties it to `shared` at construction)."""
  torch.manual_seed(seed)
  config = transformers.T5Config(**{**COMMON, **CONFIGS[kind], **overrides})
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.uniform_(0.5, 1.5)
    if not CONFIGS[kind]['tie_word_embeddings']:
      model.lm_head.weight = torch.nn.Parameter(
        torch.randn_like(model.shared.weight) * config.d_model**-0.5
      )
  return model


def token_batch(vocab_size: int = 64, seed: int = 0):
  """Encoder inputs and teacher-forced decoder tokens with ragged padding (numpy int32)."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size, (3, 9)).astype(np.int32)
  targets = rng.integers(2, vocab_size, (3, 6)).astype(np.int32)
  for row, (n_in, n_tgt) in enumerate([(9, 6), (5, 4), (2, 1)]):
    inputs[row, n_in:] = 0
    targets[row, n_tgt:] = 0
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  return inputs, decoder_inputs, targets


def hf_logits(model, inputs, decoder_inputs, inputs_embeds=None) -> np.ndarray:
  with torch.no_grad():
    mask = torch.tensor(inputs > 0, dtype=torch.long)
    kwargs = dict(input_ids=torch.tensor(inputs, dtype=torch.long))
    if inputs_embeds is not None:
      prompt_mask = torch.ones(
        mask.shape[0], inputs_embeds.shape[1] - mask.shape[1], dtype=torch.long
      )
      kwargs = dict(inputs_embeds=inputs_embeds)
      mask = torch.cat([prompt_mask, mask], dim=1)
    return model(
      **kwargs,
      attention_mask=mask,
      decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
    ).logits.numpy()


def t5pt_logits(config, params, inputs, decoder_inputs, targets) -> np.ndarray:
  model = models.EncoderDecoderModel(config)
  batch = {
    'encoder_input_tokens': jnp.asarray(inputs),
    'decoder_input_tokens': jnp.asarray(decoder_inputs),
    'decoder_target_tokens': jnp.asarray(targets),
  }
  return np.asarray(jax.jit(model.logits)(params, batch))


def until_eos(tokens, eos: int = 1) -> list[list[int]]:
  rows = []
  for row in np.asarray(tokens).tolist():
    rows.append(row[: row.index(eos) + 1] if eos in row else row)
  return rows
