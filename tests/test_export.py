"""The round trip users make: HF base -> t5pt prompt run -> exports transformers/PEFT load."""

import json
import os

import numpy as np
import peft
import pytest
import torch
import transformers

from t5pt import checkpoint_import
from t5pt import network
from t5pt import partitioning
from t5pt.errors import UserError
from tests import hf_models
from tests.conftest import run_module
from tests.conftest import train_in_process

MERGED_KERNEL = 'encoder/layers_0/mlp/wo/kernel'
# No model sizes: they come from the HF folder's config.json.
SIZE_FREE_GIN = """
include 'run.gin'
MIXTURE_OR_TASK_NAME = 'synthetic_heldout_max'
MIXTURE_OR_TASK_MODULE = 'tasks.synthetic'
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 6}
PROMPT_LENGTH = 4
TRAIN_STEPS = 3
BATCH_SIZE = 8
DROPOUT_RATE = 0.0
EVAL_PERIOD = 1000
CHECKPOINT_PERIOD = 3
LOG_PERIOD = 1
"""


@pytest.fixture(scope='module')
def hf_base(tmp_path_factory) -> tuple[str, transformers.T5ForConditionalGeneration]:
  # Vocabulary 272 >= the synthetic tasks' byte vocabulary (259 ids).
  model = hf_models.make_hf_t5('flan_t5_gated_untied', vocab_size=272)
  folder = str(tmp_path_factory.mktemp('hf_base'))
  model.save_pretrained(folder)
  return folder, model


@pytest.fixture(scope='module')
def gin_file(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp('gin') / 'size_free.gin'
  path.write_text(SIZE_FREE_GIN)
  return str(path)


@pytest.fixture(scope='module')
def trained_run(hf_base, gin_file, tmp_path_factory) -> str:
  """A prompt (and one base kernel) trained on the HF base, sizes taken from config.json."""
  model_dir = str(tmp_path_factory.mktemp('run'))
  summary = train_in_process(
    gin_file,
    model_dir,
    INITIAL_CHECKPOINT_PATH=hf_base[0],
    TRAINABLE=[network.PROMPT_PATH, MERGED_KERNEL],
  )
  assert summary['step'] == 3
  return model_dir


def _t5pt_logits_of_run(model_dir, base_dir, inputs, decoder_inputs, targets):
  run_params = checkpoint_import.read_params_as_numpy(model_dir)
  prompt_length = run_params[network.PROMPT_PATH].shape[0]
  config, params = checkpoint_import.load_model(
    base_dir, network.T5Config(prompt_length=prompt_length)
  )
  params = partitioning.unflatten({**partitioning.flatten(params), **run_params})
  return hf_models.t5pt_logits(config, params, inputs, decoder_inputs, targets), run_params


def test_exports_reproduce_t5pt_logits_in_transformers_and_peft(trained_run, hf_base, tmp_path):
  base_dir, base_model = hf_base
  out = tmp_path / 'out'
  result = run_module(
    't5pt.export',
    f'--model_dir={trained_run}',
    f'--prompt_npy={out}/prompt.npy',
    f'--hf_dir={out}/hf',
    f'--peft_dir={out}/peft',
    '--max_shard_size=40KB',
  )
  assert result.returncode == 0, result.stderr
  assert os.path.exists(out / 'hf' / 'model.safetensors.index.json')  # Sharded.
  assert sorted(os.listdir(out)) == ['hf', 'peft', 'prompt.npy']  # No partial leftovers.

  inputs, decoder_inputs, targets = hf_models.token_batch(vocab_size=272)
  ours, run_params = _t5pt_logits_of_run(trained_run, base_dir, inputs, decoder_inputs, targets)
  prompt = np.load(out / 'prompt.npy')
  np.testing.assert_array_equal(prompt, run_params[network.PROMPT_PATH])
  assert prompt.shape == (4, 16) and prompt.dtype == np.float32
  np.testing.assert_array_equal(np.load(out / 'hf' / 'prompt.npy'), prompt)

  merged = transformers.T5ForConditionalGeneration.from_pretrained(out / 'hf').eval()
  changed = merged.encoder.block[0].layer[1].DenseReluDense.wo.weight.detach().numpy()
  np.testing.assert_array_equal(changed, run_params[MERGED_KERNEL].T)
  assert not np.array_equal(
    changed, base_model.encoder.block[0].layer[1].DenseReluDense.wo.weight.detach().numpy()
  )
  with torch.no_grad():
    embeds = torch.cat(
      [
        torch.tensor(prompt)[None].expand(3, -1, -1),
        merged.shared(torch.tensor(inputs, dtype=torch.long)),
      ],
      dim=1,
    )
  theirs = hf_models.hf_logits(merged, inputs, decoder_inputs, inputs_embeds=embeds)
  valid = targets > 0
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=1e-4)
  without_prompt = hf_models.hf_logits(merged, inputs, decoder_inputs)
  assert not np.allclose(ours[valid], without_prompt[valid], atol=1e-2)  # The prompt matters.

  with_adapter = peft.PeftModel.from_pretrained(
    transformers.T5ForConditionalGeneration.from_pretrained(out / 'hf'), out / 'peft'
  ).eval()
  peft_logits = hf_models.hf_logits(with_adapter, inputs, decoder_inputs)
  np.testing.assert_allclose(ours[valid], peft_logits[valid], atol=1e-4, rtol=1e-4)


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(trained_run, tmp_path):
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'keep.txt').write_text('mine')
  result = run_module('t5pt.export', f'--model_dir={trained_run}', f'--hf_dir={existing}')
  assert result.returncode == 2 and 'already exists' in result.stderr
  assert os.listdir(existing) == ['keep.txt']

  result = run_module(
    't5pt.export',
    f'--model_dir={trained_run}',
    f'--hf_dir={tmp_path / "new"}',
    f'--base={tmp_path / "missing"}',
  )
  assert result.returncode == 2 and 'does not exist' in result.stderr
  assert sorted(os.listdir(tmp_path)) == ['existing']


def test_run_records_its_base_and_config(trained_run, hf_base):
  meta_file = os.path.join(trained_run, 'checkpoint_3', 'meta', 'metadata')
  meta = json.load(open(meta_file))
  assert meta['initial_checkpoint_path'] == hf_base[0]
  assert meta['network_config']['emb_dim'] == 16
  assert meta['network_config']['prompt_length'] == 4


def test_task_vocabulary_larger_than_the_checkpoint_is_rejected(gin_file, tmp_path):
  hf_models.make_hf_t5('flan_t5_gated_untied').save_pretrained(tmp_path / 'small_vocab')
  with pytest.raises(UserError, match='259 ids but the model of .* has 64 embedding rows'):
    train_in_process(
      gin_file, str(tmp_path / 'run'), INITIAL_CHECKPOINT_PATH=str(tmp_path / 'small_vocab')
    )
  assert not os.path.exists(tmp_path / 'run')


def test_without_sizes_or_checkpoint_the_missing_sizes_are_named(gin_file, tmp_path):
  with pytest.raises(UserError, match='network.T5Config.vocab_size is not set'):
    train_in_process(gin_file, str(tmp_path / 'run'))
