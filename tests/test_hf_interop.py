"""Numerical equivalence with transformers' T5 for models imported from HF folders."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t5pt.checkpoints import opening
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from tests import hf_models


@pytest.fixture(scope='module', params=sorted(hf_models.CONFIGS))
def hf_pair(request, tmp_path_factory):
  """(kind, HF model, its save_pretrained folder)."""
  model = hf_models.make_hf_t5(request.param)
  folder = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(folder)
  return request.param, model, folder


def test_teacher_forced_logits_match_transformers(hf_pair):
  kind, model, folder = hf_pair
  config, params = opening.load_model(folder)
  assert config.logits_via_embedding == (kind == 't5_1_0_relu_tied')
  inputs, decoder_inputs, targets = hf_models.token_batch()
  ours = hf_models.t5pt_logits(config, params, inputs, decoder_inputs, targets)
  theirs = hf_models.hf_logits(model, inputs, decoder_inputs)
  valid = targets > 0
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_decodes_match_transformers_generate(hf_pair, method):
  _, model, folder = hf_pair
  config, params = opening.load_model(folder)
  inputs, _, _ = hf_models.token_batch(seed=1)
  steps, beams = 8, (4 if method == 'beam' else 1)
  decode = inference.DecodeConfig(method=method, num_decodes=beams, alpha=0.0)
  ours, _ = jax.jit(
    functools.partial(
      inference.predict_batch, models.EncoderDecoderModel(config), max_length=steps, config=decode
    )
  )(params, jnp.asarray(inputs))
  with torch.no_grad():
    theirs = model.generate(
      input_ids=torch.tensor(inputs, dtype=torch.long),
      attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
      max_new_tokens=steps,
      min_new_tokens=0,
      do_sample=False,
      num_beams=beams,
      length_penalty=0.0,
    ).numpy()[:, 1:]
  assert hf_models.until_eos(np.asarray(ours)[:, 0]) == hf_models.until_eos(theirs)


def test_config_is_read_from_config_json(hf_pair):
  kind, model, folder = hf_pair
  facts, _ = opening.open_base(folder).architecture()
  hf = model.config
  assert facts['emb_dim'] == hf.d_model and facts['head_dim'] == hf.d_kv
  assert facts['num_encoder_layers'] == hf.num_layers
  assert facts['num_decoder_layers'] == hf.num_decoder_layers
  assert facts['mlp_activations'] == (
    ('relu',) if kind == 't5_1_0_relu_tied' else ('gelu', 'linear')
  )
  assert facts['relative_attention_max_distance'] == 20


def test_sharded_safetensors_and_pytorch_bin_load_the_same_values(tmp_path):
  model = hf_models.make_hf_t5('flan_t5_gated_untied')
  model.save_pretrained(tmp_path / 'single')
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
  assert os.path.exists(tmp_path / 'sharded' / 'model.safetensors.index.json')
  config = json.load(open(tmp_path / 'single' / 'config.json'))
  state = model.state_dict()
  os.makedirs(tmp_path / 'bin')
  torch.save(state, tmp_path / 'bin' / 'pytorch_model.bin')
  os.makedirs(tmp_path / 'bin_sharded')
  keys = sorted(state)
  halves = {
    'pytorch_model-00001-of-00002.bin': keys[: len(keys) // 2],
    'pytorch_model-00002-of-00002.bin': keys[len(keys) // 2 :],
  }
  for name, shard_keys in halves.items():
    torch.save({k: state[k] for k in shard_keys}, tmp_path / 'bin_sharded' / name)
  with open(tmp_path / 'bin_sharded' / 'pytorch_model.bin.index.json', 'w') as f:
    json.dump({'weight_map': {k: n for n, ks in halves.items() for k in ks}}, f)
  for folder in ('bin', 'bin_sharded'):
    with open(tmp_path / folder / 'config.json', 'w') as f:
      json.dump(config, f)
  reference = opening.open_base(str(tmp_path / 'single')).read_all()
  for other in ('sharded', 'bin', 'bin_sharded'):
    values = opening.open_base(str(tmp_path / other)).read_all()
    assert sorted(values) == sorted(reference)
    for name, value in reference.items():
      np.testing.assert_array_equal(values[name], value, err_msg=f'{other}: {name}')


def test_bfloat16_safetensors_are_read_exactly(tmp_path):
  model = hf_models.make_hf_t5('flan_t5_gated_untied').to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  values = opening.open_base(str(tmp_path)).read_all()
  embedding = values[network.EMBEDDING_PATH]
  assert str(embedding.dtype) == 'bfloat16'
  np.testing.assert_array_equal(
    embedding.astype(np.float32), model.shared.weight.detach().float().numpy()
  )
  query = values['encoder/layers_1/attention/query/kernel'].astype(np.float32)
  np.testing.assert_array_equal(
    query, model.encoder.block[1].layer[0].SelfAttention.q.weight.detach().float().numpy().T
  )


def test_gin_sizes_that_disagree_with_config_json_are_an_error(tmp_path):
  hf_models.make_hf_t5('flan_t5_gated_untied').save_pretrained(tmp_path)
  with pytest.raises(UserError) as error:
    opening.load_model(str(tmp_path), network.T5Config(emb_dim=32, num_heads=4))
  assert 'network.T5Config.emb_dim = 32 in gin, but 16 in the checkpoint' in str(error.value)
  assert 'num_heads' not in str(error.value)  # It agrees, so it is not reported.


def test_unsupported_hf_configs_are_named(tmp_path):
  hf_models.make_hf_t5('flan_t5_gated_untied').save_pretrained(tmp_path)
  config_file = tmp_path / 'config.json'
  config = json.loads(config_file.read_text())
  config_file.write_text(json.dumps({**config, 'feed_forward_proj': 'gated-gelu_accurate'}))
  with pytest.raises(UserError, match='feed_forward_proj'):
    opening.open_base(str(tmp_path))
  config_file.write_text(json.dumps({**config, 'model_type': 'bart'}))
  with pytest.raises(UserError, match="'bart' model"):
    opening.open_base(str(tmp_path))
  config_file.write_text(json.dumps(config))
  os.remove(tmp_path / 'model.safetensors')
  with pytest.raises(UserError, match='no weights'):
    opening.open_base(str(tmp_path))
