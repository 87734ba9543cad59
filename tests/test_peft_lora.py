"""LoRA across t5pt and HF PEFT: runs export as PEFT LORA adapters (per-module rank and
alpha) and as merged transformers folders, PEFT adapters import as t5pt runs, and what
neither side can express is a clear error."""

import json
import os
import shutil

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from t5pt.checkpoints import exporting
from t5pt.checkpoints import opening
from t5pt.checkpoints import peft_importing
from t5pt.model import methods
from t5pt.model.methods import lora as lora_method
from t5pt.model import network
from t5pt.runtime.errors import UserError
from tests import hf_models
from tests.conftest import run_module, train_in_process

VOCAB = 272  # >= the synthetic tasks' byte vocabulary (259 ids).
# Sizes come from the HF base's config.json; the adapter recipe from the included file.
GIN = """
include 'run.gin'
MIXTURE_OR_TASK_NAME = 'synthetic_heldout_max'
MIXTURE_OR_TASK_MODULE = 'tasks.synthetic'
TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 6}
PROMPT_LENGTH = 4
TRAIN_STEPS = 5
BATCH_SIZE = 8
DROPOUT_RATE = 0.0
EVAL_PERIOD = 1000
CHECKPOINT_PERIOD = 5
LOG_PERIOD = 5
"""
# A high learning rate, so that five steps move lora_b well away from zero.
FAST_ADAMW = ['optimizers.adamw.peak_learning_rate = 0.05', 'optimizers.adamw.warmup_steps = 0']
# Query and MLP-out kernels at rank 4 / alpha 8, values at 2 / 6, the untied lm_head at
# 2 / 3: the exported adapter needs rank_pattern and alpha_pattern.
MIXED_RULES = [
  ('.*/(query|mlp/wo)/kernel', 4, 8.0),
  ('.*/value/kernel', 2, 6.0),
  ('decoder/logits_dense/kernel', 2, 3.0),
]


@pytest.fixture(scope='module')
def hf_base(tmp_path_factory) -> tuple[str, transformers.T5ForConditionalGeneration]:
  model = hf_models.make_hf_t5('flan_t5_gated_untied', vocab_size=VOCAB)
  folder = str(tmp_path_factory.mktemp('hf_base'))
  model.save_pretrained(folder)
  return folder, model


def _train(tmp_path_factory, hf_dir: str, name: str, recipe: str, bindings: list[str]) -> str:
  """A 5-step run on the HF base with the adapter gin file `recipe` included."""
  gin_file = tmp_path_factory.mktemp('gin') / f'{name}.gin'
  gin_file.write_text(GIN + f"include '{recipe}'\n")
  model_dir = str(tmp_path_factory.mktemp(name))
  summary = train_in_process(
    str(gin_file), model_dir, bindings=bindings, INITIAL_CHECKPOINT_PATH=hf_dir
  )
  assert summary['step'] == 5
  return model_dir


@pytest.fixture(scope='module')
def lora_run(hf_base, tmp_path_factory) -> str:
  """gin/methods/lora.gin as shipped: rank 8, alpha 16 on every attention query and value."""
  return _train(tmp_path_factory, hf_base[0], 'lora_run', 'methods/lora.gin', FAST_ADAMW)


@pytest.fixture(scope='module')
def prompt_lora_run(hf_base, tmp_path_factory) -> str:
  """A soft prompt and LoRA with MIXED_RULES, trained together."""
  return _train(
    tmp_path_factory,
    hf_base[0],
    'prompt_lora_run',
    'methods/prompt_lora.gin',
    [f'LORA_RULES = {MIXED_RULES!r}'] + FAST_ADAMW,
  )


@pytest.fixture(scope='module')
def lora_exports(lora_run, tmp_path_factory) -> str:
  """`python -m t5pt.export --peft_dir --hf_dir` of lora_run, into out/peft and out/hf."""
  out = tmp_path_factory.mktemp('exports')
  result = run_module(
    't5pt.export', f'--model_dir={lora_run}', f'--peft_dir={out}/peft', f'--hf_dir={out}/hf'
  )
  assert result.returncode == 0, result.stderr
  return str(out)


def _t5pt_logits(path: str) -> np.ndarray:
  """Logits of a t5pt run (or base checkpoint) on hf_models.token_batch."""
  loaded = opening.load(path)
  return hf_models.t5pt_logits(
    loaded.config, loaded.params, *hf_models.token_batch(vocab_size=VOCAB)
  )


def _hf_logits(model, prompt=None) -> np.ndarray:
  """Logits of a transformers / PEFT model on hf_models.token_batch, with the soft
  `prompt` [P, d] prepended to the encoder input embeddings when given."""
  inputs, decoder_inputs, _ = hf_models.token_batch(vocab_size=VOCAB)
  embeds = None
  if prompt is not None:
    with torch.no_grad():
      tokens = model.get_input_embeddings()(torch.tensor(inputs, dtype=torch.long))
      embeds = torch.cat([torch.tensor(prompt)[None].expand(len(inputs), -1, -1), tokens], 1)
  return hf_models.hf_logits(model, inputs, decoder_inputs, inputs_embeds=embeds)


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
  valid = hf_models.token_batch(vocab_size=VOCAB)[2] > 0
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=1e-4)


def _assert_differ(ours: np.ndarray, theirs: np.ndarray) -> None:
  valid = hf_models.token_batch(vocab_size=VOCAB)[2] > 0
  assert np.abs(ours[valid] - theirs[valid]).max() > 1e-2


def _with_adapter(hf_base, peft_dir):
  base = transformers.T5ForConditionalGeneration.from_pretrained(hf_base[0])
  return peft.PeftModel.from_pretrained(base, peft_dir).eval()


def test_lora_run_exports_a_peft_adapter_with_t5pt_logits(lora_run, lora_exports, hf_base):
  peft_dir = os.path.join(lora_exports, 'peft')
  assert sorted(os.listdir(peft_dir)) == ['adapter_config.json', 'adapter_model.safetensors']
  config = json.load(open(os.path.join(peft_dir, 'adapter_config.json')))
  assert (config['peft_type'], config['r'], config['lora_alpha']) == ('LORA', 8, 16)
  assert config['rank_pattern'] == {} and config['alpha_pattern'] == {}
  assert config['base_model_name_or_path'] == hf_base[0]  # Not the merged --hf_dir.
  assert len(config['target_modules']) == 12  # q and v of 2 + 2x2 attentions.
  assert 'decoder.block.1.layer.1.EncDecAttention.v' in config['target_modules']
  weights = load_file(os.path.join(peft_dir, 'adapter_model.safetensors'))
  run = opening.open_run(lora_run)
  np.testing.assert_array_equal(
    weights['base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight'],
    run.params['encoder/layers_0/attention/query/lora_a'].T,
  )
  lora_b = run.params['decoder/layers_1/encoder_decoder_attention/value/lora_b']
  assert np.abs(lora_b).max() > 1e-2  # Trained away from its zero initialisation.
  np.testing.assert_array_equal(
    weights['base_model.model.decoder.block.1.layer.1.EncDecAttention.v.lora_B.weight'], lora_b.T
  )

  ours = _t5pt_logits(lora_run)
  _assert_close(ours, _hf_logits(_with_adapter(hf_base, peft_dir)))
  _assert_differ(ours, _hf_logits(hf_base[1]))  # The LoRA matters.


def test_hf_export_of_a_lora_run_has_the_lora_merged(lora_run, lora_exports, hf_base):
  merged = transformers.T5ForConditionalGeneration.from_pretrained(
    os.path.join(lora_exports, 'hf')
  ).eval()
  _assert_close(_t5pt_logits(lora_run), _hf_logits(merged))


# transformers 5 saves untied T5s with tie_word_embeddings=true (and
# scale_decoder_outputs=false), so PEFT takes the LoRA on lm_head for one on a tied layer.
@pytest.mark.filterwarnings('ignore:Model has `tie_word_embeddings=True`')
def test_per_module_rank_and_alpha_and_the_prompt_round_trip(prompt_lora_run, hf_base, tmp_path):
  run = opening.open_run(prompt_lora_run)
  exporting.export_peft_lora(run, str(tmp_path / 'peft'), hf_base[0])
  assert sorted(os.listdir(tmp_path / 'peft')) == [
    'adapter_config.json',
    'adapter_model.safetensors',
    'prompt.npy',
  ]
  config = json.load(open(tmp_path / 'peft' / 'adapter_config.json'))
  # 10 query and mlp/wo kernels at (4, 8) are the majority; 6 values and lm_head differ.
  assert (config['r'], config['lora_alpha']) == (4, 8)
  assert config['rank_pattern'] == {
    **{m: 2 for m in config['target_modules'] if m.endswith('.v')},
    'lm_head': 2,
  }
  assert config['alpha_pattern'] == {
    **{m: 6 for m in config['target_modules'] if m.endswith('.v')},
    'lm_head': 3,
  }
  prompt = np.load(tmp_path / 'peft' / 'prompt.npy')
  np.testing.assert_array_equal(prompt, run.prompt)

  ours = _t5pt_logits(prompt_lora_run)
  with_adapter = _with_adapter(hf_base, tmp_path / 'peft')
  _assert_close(ours, _hf_logits(with_adapter, prompt))
  _assert_differ(ours, _hf_logits(hf_base[1], prompt))

  peft_importing.import_adapter(str(tmp_path / 'peft'), hf_base[0], str(tmp_path / 'back'))
  back = opening.open_run(str(tmp_path / 'back'))
  lora = {k: v for k, v in run.params.items() if methods.owner(k) is lora_method.METHOD}
  assert sorted(back.params) == sorted(lora)
  for name, value in lora.items():
    np.testing.assert_array_equal(back.params[name], value)
  config = back.network_config()
  for kernel, (rank, alpha) in {
    'encoder/layers_1/attention/query/kernel': (4, 8),
    'decoder/layers_0/mlp/wo/kernel': (4, 8),
    'decoder/layers_1/self_attention/value/kernel': (2, 6),
    network.LOGITS_PATH: (2, 3),
  }.items():
    rule = lora_method.rule_for(config, kernel)
    assert (rule.rank, rule.alpha) == (rank, alpha), kernel
  assert lora_method.rule_for(config, 'encoder/layers_0/attention/key/kernel') is None


def test_imported_adapter_gives_the_original_runs_logits(lora_run, lora_exports, hf_base, tmp_path):
  result = run_module(
    't5pt.peft_import',
    f'--peft_dir={lora_exports}/peft',
    f'--base={hf_base[0]}',
    f'--model_dir={tmp_path}/imported',
  )
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ['imported']  # No partial leftovers.
  imported = opening.open_run(str(tmp_path / 'imported'))
  assert imported.step == 0
  assert imported.meta.initial_checkpoint_path == os.path.abspath(hf_base[0])
  assert imported.meta.imported_from == os.path.abspath(f'{lora_exports}/peft')
  assert list(imported.meta.trainable) == sorted(imported.params)
  assert len(imported.params) == 24
  assert all(methods.owner(k) is lora_method.METHOD for k in imported.params)
  np.testing.assert_allclose(
    _t5pt_logits(str(tmp_path / 'imported')), _t5pt_logits(lora_run), atol=1e-5
  )

  with pytest.raises(UserError, match='already exists .* pass --overwrite'):
    peft_importing.import_adapter(f'{lora_exports}/peft', hf_base[0], f'{tmp_path}/imported')
  peft_importing.import_adapter(f'{lora_exports}/peft', hf_base[0], f'{tmp_path}/imported', True)
  assert sorted(os.listdir(tmp_path)) == ['imported']
  # A training run, or a folder holding the user's files, is never replaced.
  user = tmp_path / 'user'
  user.mkdir()
  (user / 'notes.txt').write_text('mine')
  run_files = sorted(os.listdir(lora_run))
  for model_dir, held in ((lora_run, "'checkpoint_5'"), (str(user), "'notes.txt'")):
    with pytest.raises(UserError, match=f'--model_dir=.* holds .*{held}.*: it is not a run') as e:
      peft_importing.import_adapter(f'{lora_exports}/peft', hf_base[0], model_dir, overwrite=True)
    assert 'pass --overwrite' not in str(e.value)
  assert sorted(os.listdir(lora_run)) == run_files and os.listdir(user) == ['notes.txt']
  user.joinpath('notes.txt').unlink()
  user.rmdir()
  with pytest.raises(UserError, match='holds an imported adapter .* new MODEL_DIR'):
    (tmp_path / 'lora.gin').write_text(GIN + "include 'methods/lora.gin'\n")
    train_in_process(
      str(tmp_path / 'lora.gin'),
      str(tmp_path / 'imported'),
      bindings=FAST_ADAMW,
      INITIAL_CHECKPOINT_PATH=hf_base[0],
    )
  assert sorted(os.listdir(tmp_path / 'imported')) == ['checkpoint_0']


@pytest.mark.parametrize(
  'options',
  [
    {},
    # rslora scales by alpha / sqrt(r); pattern keys are regexes matched at name ends.
    {
      'use_rslora': True,
      'rank_pattern': {r'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo': 2},
      'alpha_pattern': {'EncDecAttention.q': 3},
    },
  ],
  ids=['plain', 'rslora_patterns'],
)
def test_adapter_saved_by_peft_imports_with_peft_logits(options, hf_base, tmp_path):
  torch.manual_seed(0)
  model = peft.get_peft_model(
    hf_models.make_hf_t5('flan_t5_gated_untied', vocab_size=VOCAB),
    peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=['q', 'v', 'wo'], task_type='SEQ_2_SEQ_LM', **options
    ),
  )
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'lora_B' in name:
        param.normal_(0, 0.3)
  model.save_pretrained(tmp_path / 'adapter')
  theirs = _hf_logits(model.eval())
  saved = sorted(os.listdir(tmp_path / 'adapter'))
  with pytest.raises(UserError, match='--peft_dir=.* holds .*it is not an adapter t5pt.export'):
    exporting.check_output_dir(str(tmp_path / 'adapter'), '--peft_dir', overwrite=True)
  assert sorted(os.listdir(tmp_path / 'adapter')) == saved

  peft_importing.import_adapter(str(tmp_path / 'adapter'), hf_base[0], str(tmp_path / 'run'))
  ours = _t5pt_logits(str(tmp_path / 'run'))
  _assert_close(ours, theirs)
  _assert_differ(ours, _hf_logits(hf_base[1]))


@pytest.fixture(scope='module')
def ia3_run(hf_base, tmp_path_factory) -> str:
  return _train(
    tmp_path_factory,
    hf_base[0],
    'ia3_run',
    'methods/ia3.gin',
    ['optimizers.adafactor.learning_rate = 0.1'],
  )


def test_ia3_run_exports_merged_but_not_as_peft(ia3_run, hf_base, tmp_path):
  result = run_module(
    't5pt.export',
    f'--model_dir={ia3_run}',
    f'--hf_dir={tmp_path}/hf',
    f'--peft_dir={tmp_path}/peft',
  )
  assert result.returncode == 2
  assert 'IA3' in result.stderr and 'Use --hf_dir' in result.stderr
  assert os.listdir(tmp_path) == []  # Refused before writing anything.

  run = opening.open_run(ia3_run)
  exporting.export_hf(run, str(tmp_path / 'hf'), hf_base[0], max_shard_bytes=1 << 30)
  merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / 'hf').eval()
  ours = _t5pt_logits(ia3_run)
  _assert_close(ours, _hf_logits(merged))
  _assert_differ(ours, _hf_logits(hf_base[1]))


def test_deep_prompt_runs_are_not_exported_to_hf_or_peft(hf_base, tmp_path_factory, tmp_path):
  run = opening.open_run(
    _train(
      tmp_path_factory, hf_base[0], 'prefix_run', 'methods/deep_prompt.gin', ['PREFIX_LENGTH = 2']
    )
  )
  with pytest.raises(UserError, match='deep-prompt prefixes'):
    exporting.peft_type(run)
  with pytest.raises(UserError, match='prefix_key.*no place for'):
    exporting.export_hf(run, str(tmp_path / 'hf'), hf_base[0], max_shard_bytes=1 << 30)
  assert os.listdir(tmp_path) == []


def _copy_adapter(lora_exports, tmp_path, **config_changes) -> str:
  folder = str(tmp_path / 'adapter')
  shutil.copytree(os.path.join(lora_exports, 'peft'), folder)
  config_file = os.path.join(folder, 'adapter_config.json')
  config = json.load(open(config_file))
  json.dump({**config, **config_changes}, open(config_file, 'w'))
  return folder


@pytest.mark.parametrize(
  'changes, message',
  [
    ({'use_dora': True}, r'sets use_dora=True, which t5pt does not support: it imports plain'),
    ({'bias': 'lora_only'}, r"sets bias='lora_only', which t5pt does not support"),
    ({'init_lora_weights': 'pissa'}, r"init_lora_weights='pissa' \(PEFT rewrites the base"),
    ({'r': 4}, r"'decoder.block.0.layer.0.SelfAttention.q' has rank 8 in its weights but 4"),
    ({'peft_type': 'IA3'}, r"peft_type is 'IA3'; t5pt.peft_import reads LORA adapters"),
  ],
)
def test_unsupported_adapter_configs_are_named(changes, message, lora_exports, hf_base, tmp_path):
  folder = _copy_adapter(lora_exports, tmp_path, **changes)
  with pytest.raises(UserError, match=message):
    peft_importing.import_adapter(folder, hf_base[0], str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_missing_weights_and_unknown_modules_are_named(lora_exports, hf_base, tmp_path):
  folder = _copy_adapter(lora_exports, tmp_path)
  weights_file = os.path.join(folder, 'adapter_model.safetensors')
  weights = load_file(weights_file)
  os.remove(weights_file)
  with pytest.raises(
    UserError, match='has adapter_config.json but no weights: expected adapter_model.safetensors'
  ):
    peft_importing.import_adapter(folder, hf_base[0], str(tmp_path / 'run'))

  prefix = 'base_model.model.encoder.block.0.layer.0.SelfAttention.'
  for side in ('A', 'B'):
    weights[f'{prefix}relative_attention_bias.lora_{side}.weight'] = weights.pop(
      f'{prefix}q.lora_{side}.weight'
    )
  save_file(weights, weights_file)
  with pytest.raises(
    UserError,
    match=r"'encoder.block.0.layer.0.SelfAttention"
    r".relative_attention_bias' is not a linear layer of the base T5",
  ):
    peft_importing.import_adapter(folder, hf_base[0], str(tmp_path / 'run'))

  with pytest.raises(UserError, match='--base=.* does not exist'):
    peft_importing.import_adapter(folder, str(tmp_path / 'nowhere'), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
