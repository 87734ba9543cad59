"""Training: only TRAINABLE leaves move, run state on disk, metrics, prompt init in a run."""

import glob
import json
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5pt.checkpoints import opening
from t5pt.model import models
from t5pt.model import network
from t5pt.model import steps
from t5pt.runtime import partitioning
from t5pt.training import optimizers
from tests.conftest import TINY as TINY_2_LAYERS
from tests.conftest import train_in_process

TINY = dict(TINY_2_LAYERS, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)


def _batch(rng, batch=4, in_len=6, tgt_len=4):
  enc = rng.integers(3, 32, (batch, in_len)).astype(np.int32)
  enc[:, -2:] = 0
  tgt = rng.integers(3, 32, (batch, tgt_len)).astype(np.int32)
  tgt[:, -1] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {
    'encoder_input_tokens': enc,
    'decoder_input_tokens': dec_in,
    'decoder_target_tokens': tgt,
    'decoder_loss_weights': (tgt > 0).astype(np.float32),
  }


def _train_steps(patterns, optimizer, num_steps=3):
  model = models.EncoderDecoderModel(network.T5Config(**TINY, prompt_length=4))
  params = partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(0), 6, 4)))
  trainable_paths, frozen_paths = partitioning.split_trainable(list(params), patterns)
  trainable = partitioning.unflatten({k: params[k] for k in trainable_paths})
  frozen = partitioning.unflatten({k: params[k] for k in frozen_paths})
  opt_state = optimizer.transform.init(trainable)
  step_fn = jax.jit(steps.build_train_step(model, optimizer.transform, jax.random.PRNGKey(1)))
  batch = _batch(np.random.default_rng(0))
  for step in range(num_steps):
    trainable, opt_state, _ = step_fn(trainable, opt_state, frozen, batch, step)
  after = partitioning.flatten(steps.combine(frozen, trainable))
  return params, after, trainable_paths, opt_state


def test_only_prompt_leaves_change_and_only_they_get_optimizer_state():
  before, after, trainable_paths, opt_state = _train_steps(
    [network.PROMPT_PATH], optimizers.adafactor()
  )
  assert trainable_paths == [network.PROMPT_PATH]
  for path, value in before.items():
    if path == network.PROMPT_PATH:
      assert not np.allclose(after[path], value)
    else:
      np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(value), path)
  state_size = sum(np.size(x) for x in jax.tree.leaves(opt_state))
  assert state_size <= 2 * before[network.PROMPT_PATH].size + 8


def test_full_fine_tuning_is_the_same_code_with_everything_trainable():
  before, after, trainable_paths, _ = _train_steps(
    ['.*'], optimizers.adamw(decay_steps=10, warmup_steps=1)
  )
  assert len(trainable_paths) == len(before)
  for path in before:
    if path.endswith('kernel') or path.endswith('embedding'):
      assert not np.allclose(after[path], before[path]), path


def test_prompt_run_writes_only_trainable_state_and_metrics(base_checkpoint, tmp_path):
  model_dir = str(tmp_path / 'prompt')
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    model_dir,
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=6,
    CHECKPOINT_PERIOD=3,
    LOG_PERIOD=2,
    EVAL_PERIOD=3,
    FROZEN_DTYPE='bfloat16',
  )
  assert sorted(os.listdir(model_dir)) == [
    'checkpoint_3',
    'checkpoint_6',
    'config.gin',
    'eval',
    'metrics.jsonl',
    'train',
  ]
  stored = (
    ocp.PyTreeCheckpointer()
    .metadata(os.path.join(model_dir, 'checkpoint_6', 'params'))
    .item_metadata.tree
  )
  assert list(partitioning.flatten(stored)) == [network.PROMPT_PATH]
  np.testing.assert_array_equal(
    opening.open_base(model_dir).read_all()['encoder/prompt/prompt'],
    summary['params']['encoder']['prompt']['prompt'],
  )
  lines = [json.loads(l) for l in open(os.path.join(model_dir, 'metrics.jsonl'))]
  train_lines = [l for l in lines if l['split'] == 'train']
  assert [l['step'] for l in train_lines] == [2, 4, 6]
  for key in (
    'loss',
    'token_accuracy',
    'sequence_accuracy',
    'learning_rate',
    'steps_per_second',
    'tokens_per_second',
  ):
    assert np.isfinite(train_lines[-1][key]), key
  assert train_lines[-1]['learning_rate'] == 0.3
  assert [l['step'] for l in lines if l['split'] == 'eval'] == [0, 3, 6]
  assert glob.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*'))
  assert glob.glob(os.path.join(model_dir, 'eval', 'events.out.tfevents.*'))
  assert summary['trainable_parameters'] == 8 * 128
  assert summary['eval']['loss'] < summary['eval_at_start']['loss']


def test_class_label_init_inside_a_run_uses_the_base_embedding(base_checkpoint, tmp_path):
  summary = train_in_process(
    'gin/t5_1_1_tiny_prompt.gin',
    str(tmp_path / 'init'),
    bindings=['PROMPT_INIT = @prompts.class_labels', "prompts.class_labels.labels = ['a', 'bc']"],
    INITIAL_CHECKPOINT_PATH=base_checkpoint,
    TRAIN_STEPS=0,
  )
  embedding = opening.open_base(base_checkpoint).read_all()['token_embedder/embedding']
  prompt = summary['params']['encoder']['prompt']['prompt']
  a, b, c = (ord(ch) + 3 for ch in 'abc')  # ByteVocabulary: id = byte + 3
  np.testing.assert_allclose(prompt[0], embedding[a], rtol=1e-6)
  np.testing.assert_allclose(prompt[1], (embedding[b] + embedding[c]) / 2, rtol=1e-6)
