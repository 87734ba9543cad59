"""Every user mistake: one clear message, non-zero exit, nothing written."""

import os

import pytest

import gin
from t5pt.runtime import gin_utils
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.training import trainer
from tests.conftest import run_module, train_in_process

PROMPT_GIN = 'gin/t5_1_1_tiny_prompt.gin'


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _expect_error(tmp_path, fragments, bindings=(), **macros):
  model_dir = str(tmp_path / 'run')
  with pytest.raises(UserError) as error:
    train_in_process(PROMPT_GIN, model_dir, bindings=bindings, **macros)
  for fragment in fragments:
    assert fragment in str(error.value)
  assert not os.path.exists(model_dir), 'an error must leave no run directory behind'
  return str(error.value)


def test_unknown_task_names_it_and_suggests(tmp_path):
  _expect_error(
    tmp_path,
    ["'synthetic_heldout_mx'", 'synthetic_heldout_max', 'MIXTURE_OR_TASK_MODULE'],
    MIXTURE_OR_TASK_NAME='synthetic_heldout_mx',
  )


def test_unimportable_task_module(tmp_path):
  _expect_error(
    tmp_path, ["MIXTURE_OR_TASK_MODULE='tasks.nope'"], MIXTURE_OR_TASK_MODULE='tasks.nope'
  )


def test_misspelled_macro_binding_is_rejected_with_suggestion(tmp_path):
  _expect_error(tmp_path, ['TRAIN_STPES', "'TRAIN_STEPS'"], bindings=['TRAIN_STPES = 3'])


def test_misspelled_configurable_parameter(tmp_path):
  _expect_error(
    tmp_path,
    ['network.T5Config.emb_dimm', "doesn't have a parameter"],
    bindings=['network.T5Config.emb_dimm = 3'],
  )


def test_missing_initial_checkpoint(tmp_path):
  _expect_error(
    tmp_path,
    ["INITIAL_CHECKPOINT_PATH='/no/such/dir'", 'does not exist'],
    INITIAL_CHECKPOINT_PATH='/no/such/dir',
  )


def test_directory_without_checkpoint(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  _expect_error(
    tmp_path, ['is not a checkpoint t5pt recognises'], INITIAL_CHECKPOINT_PATH=str(empty)
  )


def test_feature_lengths_too_short_for_prompt(tmp_path):
  _expect_error(
    tmp_path,
    ["TASK_FEATURE_LENGTHS['inputs']=8", 'PROMPT_LENGTH=8', 'at least 9'],
    TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4},
  )


def test_gin_size_disagreeing_with_checkpoint_names_both_values(tmp_path, base_checkpoint):
  _expect_error(
    tmp_path,
    ['network.T5Config.mlp_dim = 64 in gin, but 256 in the checkpoint', base_checkpoint],
    bindings=['network.T5Config.mlp_dim = 64'],
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
  )
  assert not os.path.exists(tmp_path / 'run')


def test_model_dir_not_set(tmp_path):
  gin_utils.parse([PROMPT_GIN], [])
  with pytest.raises(UserError, match='MODEL_DIR is not set'):
    trainer.train(progress_bar=False)


def test_batch_size_not_divisible_by_mesh(tmp_path):
  _expect_error(tmp_path, ['NUM_PARTITIONS', 'divide'], NUM_PARTITIONS=3)


def test_changed_trainable_set_on_resume(tmp_path, base_checkpoint):
  model_dir = str(tmp_path / 'run')
  train_in_process(
    PROMPT_GIN,
    model_dir,
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=2,
    CHECKPOINT_PERIOD=2,
  )
  with pytest.raises(UserError, match='was trained with trainable parameters'):
    train_in_process(
      PROMPT_GIN,
      model_dir,
      INITIAL_CHECKPOINT_PATH=base_checkpoint,
      TRAIN_STEPS=4,
      TRAINABLE=['encoder/prompt/prompt', 'encoder/encoder_norm/scale'],
    )
  assert sorted(os.listdir(model_dir))[:1] == ['checkpoint_2']


def test_trainable_pattern_matching_nothing(tmp_path):
  _expect_error(
    tmp_path, ["'encoder/promt/prompt'", 'matches no parameter'], TRAINABLE=['encoder/promt/prompt']
  )


def test_command_line_exit_code_and_message(tmp_path):
  result = run_module(
    't5pt.train',
    f'--gin_file={PROMPT_GIN}',
    f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
    '--gin.TRAIN_STPES=3',
  )
  assert result.returncode == 2
  assert 't5pt: error:' in result.stderr and 'TRAIN_STPES' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_prompt_initialiser_misconfigured(tmp_path):
  _expect_error(
    tmp_path,
    ['prompts.class_labels needs labels'],
    bindings=['PROMPT_INIT = @prompts.class_labels'],
  )


def test_nothing_to_train_without_a_prompt_or_method(tmp_path):
  _expect_error(tmp_path, ['Nothing to train', 'PROMPT_LENGTH', 'TRAINABLE'], PROMPT_LENGTH=0)


def test_adapters_left_out_of_an_overriding_trainable(tmp_path):
  _expect_error(
    tmp_path,
    ['adapter parameter(s)', 'are not in TRAINABLE'],
    bindings=['network.T5Config.lora_rules = %adapters.DEFAULT_LORA_RULES'],
    TRAINABLE=['encoder/prompt/prompt'],
  )


def test_the_method_decides_what_trains(tmp_path):
  """No TRAINABLE: the prompt and the LoRA factors train, and nothing else."""
  summary = train_in_process(
    PROMPT_GIN,
    str(tmp_path / 'run'),
    TRAIN_STEPS=1,
    EVAL_PERIOD=1000,
    bindings=['network.T5Config.lora_rules = %adapters.DEFAULT_LORA_RULES'],
  )
  trained = set(partitioning.flatten(summary['params']))
  assert 'encoder/prompt/prompt' in trained
  lora = trained - {'encoder/prompt/prompt'}
  assert lora and all(p.endswith(('/lora_a', '/lora_b')) for p in lora)
