"""The round trip users make: HF base -> t5pt prompt run -> exports transformers/PEFT load."""

import json
import os

import numpy as np
import peft
import pytest
import torch
import transformers

from t5pt.checkpoints import exporting
from t5pt.checkpoints import opening
from t5pt.model import network
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from tests import hf_models
from tests.conftest import run_module, train_in_process

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
  run_params = opening.open_base(model_dir).read_all()
  prompt_length = run_params[network.PROMPT_PATH].shape[0]
  config, params = opening.load_model(base_dir, network.T5Config(prompt_length=prompt_length))
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
  # The user's files are never replaced, and --overwrite is not offered for them; the
  # other outputs are checked first, so nothing is written.
  result = run_module(
    't5pt.export',
    f'--model_dir={trained_run}',
    f'--prompt_npy={tmp_path / "p.npy"}',
    f'--peft_dir={existing}',
    '--overwrite',
  )
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert "holds 'keep.txt'" in result.stderr and 'pass --overwrite' not in result.stderr
  assert os.listdir(existing) == ['keep.txt'] and (existing / 'keep.txt').read_text() == 'mine'
  # A parent that is a file: one message, not FileExistsError.
  result = run_module(
    't5pt.export', f'--model_dir={trained_run}', f'--prompt_npy={existing}/keep.txt/p.npy'
  )
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert 'cannot be created' in result.stderr and 'keep.txt is a file' in result.stderr

  result = run_module(
    't5pt.export',
    f'--model_dir={trained_run}',
    f'--hf_dir={tmp_path / "new"}',
    f'--base={tmp_path / "missing"}',
  )
  assert result.returncode == 2 and 'does not exist' in result.stderr
  assert sorted(os.listdir(tmp_path)) == ['existing']


def _tree(folder) -> dict:
  """{relative path: bytes, or None for a folder} of everything under `folder`."""
  found = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      found[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in files:
      path = os.path.join(root, name)
      found[os.path.relpath(path, folder)] = open(path, 'rb').read()
  return found


def test_every_output_is_checked_before_anything_is_written(tmp_path):
  (tmp_path / 'a_file').write_text('mine')
  user = tmp_path / 'user'
  user.mkdir()
  (user / 'notes.txt').write_text('mine')
  np.save(tmp_path / 'old.npy', np.zeros(2))
  run = str(tmp_path / 'run')
  cases = [
    ({'--prompt_npy': f'{tmp_path}/a_file/p.npy'}, ['--prompt_npy=', 'a_file is a file']),
    ({'--hf_dir': f'{tmp_path}/a_file/hf'}, ['--hf_dir=', 'cannot be created', 'a_file is a']),
    ({'--peft_dir': f'{tmp_path}/a_file'}, ['--peft_dir=', 'is a file, not a directory']),
    ({'--prompt_npy': str(user)}, ['is a directory', f'--prompt_npy={user}/prompt.npy']),
    ({'--prompt_npy': f'{tmp_path}/a_file'}, ['already exists and is not a .npy file']),
    ({'--peft_dir': str(user)}, ["holds 'notes.txt'", 'with or without --overwrite']),
    ({'--hf_dir': str(user)}, ["holds 'notes.txt'", f'--hf_dir={str(user)!r}']),
    ({'--hf_dir': f'{tmp_path}/out', '--peft_dir': f'{tmp_path}/out/'}, ['overlap']),
    ({'--prompt_npy': f'{tmp_path}/out/p.npy', '--hf_dir': f'{tmp_path}/out'}, ['overlap']),
    ({'--hf_dir': run}, ['would replace --model_dir=', 'which the export reads']),
    ({'--peft_dir': str(tmp_path)}, ['would replace --model_dir=']),
  ]
  before = _tree(tmp_path)
  for outputs, fragments in cases:
    with pytest.raises(UserError) as error:
      exporting.check_outputs(outputs, {'--model_dir': run, '--base': None}, overwrite=True)
    message = str(error.value)
    assert all(f in message for f in fragments), (outputs, message)
    assert 'pass --overwrite' not in message
  for overwrite in (False, True):  # A .npy file: replaced only with --overwrite.
    outputs = {'--prompt_npy': str(tmp_path / 'old.npy')}
    if overwrite:
      exporting.check_outputs(outputs, {}, overwrite)
    else:
      with pytest.raises(UserError, match='already exists; .* pass --overwrite'):
        exporting.check_outputs(outputs, {}, overwrite)
  assert _tree(tmp_path) == before


def test_overwrite_replaces_only_what_t5pt_wrote(trained_run, hf_base, tmp_path):
  run = opening.open_run(trained_run)
  peft_dir, hf_dir, npy = str(tmp_path / 'peft'), str(tmp_path / 'hf'), str(tmp_path / 'p.npy')
  exporting.export_prompt(np.zeros((4, 16)), npy)
  exporting.export_peft_prompt(run, peft_dir, 'base')
  exporting.export_hf(run, hf_dir, hf_base[0], 1 << 30)
  for write in (
    lambda overwrite: exporting.export_prompt(run.prompt, npy, overwrite),
    lambda overwrite: exporting.export_peft_prompt(run, peft_dir, 'base', overwrite),
    lambda overwrite: exporting.export_hf(run, hf_dir, hf_base[0], 1 << 30, overwrite),
  ):
    with pytest.raises(UserError, match='already exists.* pass --overwrite to replace it'):
      write(False)
    write(True)
  np.testing.assert_array_equal(np.load(npy), run.prompt)
  assert sorted(os.listdir(tmp_path)) == ['hf', 'p.npy', 'peft']  # No partial leftovers.

  # A user's file in an export, a config PEFT (not t5pt) wrote, an HF folder without the
  # marker: never replaced, whatever --overwrite says.
  (tmp_path / 'hf' / 'README.md').write_text('mine')
  config = json.loads((tmp_path / 'peft' / 'adapter_config.json').read_text())
  (tmp_path / 'peft' / 'adapter_config.json').write_text(json.dumps({**config, 'revision': None}))
  before = _tree(tmp_path)
  with pytest.raises(UserError, match="holds 'README.md': it is not a folder t5pt.export wrote"):
    exporting.export_hf(run, hf_dir, hf_base[0], 1 << 30, overwrite=True)
  with pytest.raises(UserError, match="holds 'adapter_config.json': it is not an adapter"):
    exporting.export_peft_prompt(run, peft_dir, 'base', overwrite=True)
  with pytest.raises(UserError, match="holds 'config.json'"):
    exporting.check_output_dir(hf_base[0], '--hf_dir', overwrite=True)
  assert _tree(tmp_path) == before

  # Checked again when the finished folder replaces the old one: a file the user added
  # meanwhile keeps the old folder, and the new one is dropped.
  (tmp_path / 'hf' / 'README.md').unlink()
  with pytest.raises(UserError, match="holds 'late.txt'"):
    with exporting.atomic_output_dir(hf_dir, '--hf_dir', overwrite=True) as scratch:
      (tmp_path / 'hf' / 'late.txt').write_text('mine')
      fs.write_text(fs.join(scratch, exporting.HF_MARKER), '{}')
  assert (tmp_path / 'hf' / 'late.txt').read_text() == 'mine'
  assert sorted(os.listdir(tmp_path)) == ['hf', 'p.npy', 'peft']


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
