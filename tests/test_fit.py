"""Memory levers: activation rematerialisation and microbatches change memory, not results."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.model import models
from t5pt.model import network
from t5pt.model import steps
from t5pt.runtime import partitioning
from t5pt.training import optimizers
from tests.conftest import TINY, train_in_process

BATCH, INPUTS, TARGETS, PROMPT = 8, 12, 6, 3


def _batch(rng: np.random.Generator) -> dict:
  """A batch with padding in both features and one row whose targets are nearly empty."""
  inputs = rng.integers(2, TINY['vocab_size'], (BATCH, INPUTS))
  inputs[:, 9:] = 0
  targets = rng.integers(2, TINY['vocab_size'], (BATCH, TARGETS))
  targets[:, 4:] = 0
  targets[0, 1:] = 0
  shifted = np.concatenate([np.zeros((BATCH, 1), int), targets[:, :-1]], axis=1)
  return {
    'encoder_input_tokens': inputs,
    'decoder_input_tokens': shifted,
    'decoder_target_tokens': targets,
  }


def _model(**overrides) -> tuple[models.EncoderDecoderModel, dict, dict]:
  """A tiny prompt-tuning model and its (trainable prompt, frozen rest) trees."""
  loss = models.LossConfig(**overrides.pop('loss', {}))
  config = network.T5Config(**{**TINY, 'prompt_length': PROMPT, **overrides})
  model = models.EncoderDecoderModel(config, loss)
  flat = partitioning.flatten(nn.unbox(model.init(jax.random.PRNGKey(0), INPUTS, TARGETS)))
  trainable = {network.PROMPT_PATH: flat.pop(network.PROMPT_PATH)}
  return model, partitioning.unflatten(trainable), partitioning.unflatten(flat)


@pytest.mark.parametrize('policy', ['minimal', 'dots', 'full'])
def test_remat_gives_the_same_loss_and_gradients(policy):
  batch = _batch(np.random.default_rng(0))
  results = {}
  for name in ('none', policy):
    # Dropout on: a rematerialised layer must redraw the same dropout masks.
    model, _, _ = _model(remat_policy=name, dropout_rate=0.2, prompt_length=PROMPT)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), INPUTS, TARGETS))
    loss_fn = lambda p: model.loss_and_metrics(p, batch, jax.random.PRNGKey(3))[0]
    results[name] = jax.jit(jax.value_and_grad(loss_fn))(params)
  (loss, grads), (remat_loss, remat_grads) = results['none'], results[policy]
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for path, grad in partitioning.flatten(grads).items():
    np.testing.assert_allclose(
      partitioning.flatten(remat_grads)[path], grad, rtol=1e-5, atol=1e-7, err_msg=path
    )
  assert float(jnp.abs(grads['encoder']['prompt']['prompt']).max()) > 0


def _train(model, trainable, frozen, batches, num_microbatches):
  tx = optimizers.adafactor().transform
  step = jax.jit(steps.build_train_step(model, tx, jax.random.PRNGKey(1), num_microbatches))
  params, opt_state, history = trainable, tx.init(trainable), []
  for i, batch in enumerate(batches):
    params, opt_state, metrics = step(params, opt_state, frozen, batch, i)
    history.append(metrics)
  return params, history


@pytest.mark.parametrize('normaliser', ['NUM_REAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE', 50.0])
def test_microbatches_train_like_one_big_batch(normaliser):
  rng = np.random.default_rng(1)
  batches = [_batch(rng) for _ in range(4)]
  model, trainable, frozen = _model(loss={'loss_normalizing_factor': normaliser})
  whole, whole_metrics = _train(model, trainable, frozen, batches, 1)
  for m in (2, 4):
    split, split_metrics = _train(model, trainable, frozen, batches, m)
    np.testing.assert_allclose(
      split['encoder']['prompt']['prompt'],
      whole['encoder']['prompt']['prompt'],
      rtol=1e-4,
      atol=1e-5,
    )
    for ours, theirs in zip(split_metrics, whole_metrics):
      for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, err_msg=name)
  moved = np.abs(whole['encoder']['prompt']['prompt'] - trainable['encoder']['prompt']['prompt'])
  assert moved.max() > 1e-3  # The comparison above is between prompts that trained.


def _temp_bytes(model, trainable, frozen, num_microbatches) -> int:
  """Bytes of temporaries (activations saved for the backward pass, and the rest) XLA's
  CPU backend assigns for one compiled training step."""
  tx = optimizers.adafactor().transform
  step = jax.jit(steps.build_train_step(model, tx, jax.random.PRNGKey(1), num_microbatches))
  batch = {k: np.repeat(v, 8, axis=0) for k, v in _batch(np.random.default_rng(0)).items()}
  compiled = step.lower(trainable, tx.init(trainable), frozen, batch, 0).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_microbatches_lower_the_activation_memory():
  sizes = dict(emb_dim=128, mlp_dim=512, num_heads=4, head_dim=32)
  assert _temp_bytes(*_model(**sizes), 4) < 0.5 * _temp_bytes(*_model(**sizes), 1)
  # Remat's saving cannot be seen here: XLA's CPU compiler merges the recomputation back
  # into the forward pass. tests/test_plan.py checks it on JAX's saved residuals.


@pytest.mark.slow
def test_a_run_with_microbatches_and_remat_trains_the_same_prompt(base_checkpoint, tmp_path):
  common = dict(
    TRAIN_STEPS=4, BATCH_SIZE=8, EVAL_PERIOD=100, INITIAL_CHECKPOINT_PATH=base_checkpoint
  )
  gin_file = 'gin/t5_1_1_tiny_prompt.gin'
  whole = train_in_process(gin_file, str(tmp_path / 'whole'), **common)
  split = train_in_process(
    gin_file, str(tmp_path / 'split'), NUM_MICROBATCHES=4, REMAT_POLICY='full', **common
  )
  prompt = lambda summary: summary['params']['encoder']['prompt']['prompt']
  np.testing.assert_allclose(prompt(split), prompt(whole), rtol=1e-4, atol=1e-5)
  assert split['train']['loss'] == pytest.approx(whole['train']['loss'], rel=1e-5)


def test_average_per_sequence_weighs_packed_sequences_like_unpacked_ones():
  """Three examples, unpacked in three rows and packed into two: the same per-sequence
  mean loss and sequence count (t5x's per-segment normalisation)."""
  loss = models.LossConfig(loss_normalizing_factor='AVERAGE_PER_SEQUENCE')
  model = models.EncoderDecoderModel(network.T5Config(**TINY), loss)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), 8, 8))
  examples = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([16], [17])]

  def rows(groups):
    batch = {
      k: np.zeros((len(groups), 8), np.int32)
      for k in (
        'encoder_input_tokens',
        'decoder_input_tokens',
        'decoder_target_tokens',
        'encoder_segment_ids',
        'decoder_segment_ids',
      )
    }
    for r, group in enumerate(groups):
      at_in = at_out = 0
      for segment, (inputs, targets) in enumerate(group, start=1):
        batch['encoder_input_tokens'][r, at_in : at_in + len(inputs)] = inputs
        batch['encoder_segment_ids'][r, at_in : at_in + len(inputs)] = segment
        batch['decoder_target_tokens'][r, at_out : at_out + len(targets)] = targets
        batch['decoder_input_tokens'][r, at_out : at_out + len(targets)] = [0, *targets[:-1]]
        batch['decoder_segment_ids'][r, at_out : at_out + len(targets)] = segment
        at_in, at_out = at_in + len(inputs), at_out + len(targets)
    return batch

  unpacked = rows([[e] for e in examples])
  packed = rows([examples[:2], examples[2:]])
  loss, metrics = model.loss_and_metrics(params, unpacked)
  packed_loss, packed_metrics = model.loss_and_metrics(params, packed)
  np.testing.assert_allclose(packed_loss, loss, rtol=1e-5)
  assert model.loss_normaliser(packed) == model.loss_normaliser(unpacked) == 3
  assert packed_metrics['num_sequences'] == metrics['num_sequences'] == 3
