"""Loss and teacher-forced metrics around the T5 network."""

import dataclasses
from typing import Mapping, Optional, Union

import jax
import jax.numpy as jnp

import gin
from t5pt.model import network

Batch = Mapping[str, jax.Array]


@gin.configurable(module='models')
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Cross-entropy options, as in t5x's EncoderDecoderModel.

  loss_normalizing_factor: 'NUM_REAL_TARGET_TOKENS' (mean over target tokens),
    'AVERAGE_PER_SEQUENCE' (mean over tokens of each sequence, then over sequences) or a
    number the summed loss is divided by (t5x's constant normaliser).
  """

  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Union[str, float] = 'NUM_REAL_TARGET_TOKENS'


def cross_entropy(
  logits: jax.Array, targets: jax.Array, z_loss: float, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
  """Per-token loss and z-loss, both [batch, length], for logits [batch, length, vocab]."""
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  # Subtracting the entropy of the smoothed targets makes a perfect prediction cost 0.
  normalizer = (
    -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    if label_smoothing
    else 0.0
  )
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  loss = (
    -(
      confidence * target_log_prob + low * (log_probs.sum(-1) - target_log_prob)
      if label_smoothing
      else target_log_prob
    )
    - normalizer
  )
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def _sequence_correct(
  correct_or_ignored: jax.Array, segments: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Counts sequences (segments, when packed) whose every target token is right."""
  positions = jnp.ones(segments.shape, jnp.float32)
  wrong, length = _per_sequence((~correct_or_ignored).astype(jnp.float32), positions, segments)
  exists = length > 0
  return (exists & (wrong == 0)).sum(), exists.sum()


def _segments(batch: Batch, weights: jax.Array) -> jax.Array:
  """[batch, target_length] sequence ids: the packed segments, else 1 per row (0: padding)."""
  return batch.get('decoder_segment_ids', (weights > 0).astype(jnp.int32))


def _per_sequence(values: jax.Array, weights: jax.Array, segments: jax.Array):
  """Sums of `values` and `weights` [batch, length] per sequence: ([batch, length] each,
  indexed by segment id - 1; a packed row holds several sequences)."""
  one_hot = jax.nn.one_hot(segments, segments.shape[1] + 1, dtype=jnp.float32)[..., 1:]
  return jnp.einsum('bl,bls->bs', values, one_hot), jnp.einsum('bl,bls->bs', weights, one_hot)


class EncoderDecoderModel:
  """Binds the flax network to a loss; params are the nested (unboxed) dict."""

  def __init__(self, config: network.T5Config, loss: LossConfig = LossConfig()):
    self.config = config.require_complete()
    self.loss_config = loss
    self.module = network.Transformer(config)

  def init(self, rng: jax.Array, input_length: int, target_length: int):
    """Boxed (logically partitioned) parameters for the given feature lengths."""
    tokens = jnp.ones((1, input_length), jnp.int32)
    targets = jnp.ones((1, target_length), jnp.int32)
    return self.module.init(rng, tokens, targets, targets, enable_dropout=False)['params']

  def logits(self, params, batch: Batch, dropout_rng: Optional[jax.Array] = None):
    """[batch, target_length, vocab] float32 logits, teacher-forced."""
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      batch.get('encoder_segment_ids'),
      batch.get('decoder_segment_ids'),
      enable_dropout=dropout_rng is not None,
      rngs=rngs,
    )

  def loss_weights(self, batch: Batch) -> jax.Array:
    """[batch, target_length] float32: 1 for real target tokens, 0 for padding."""
    targets = batch['decoder_target_tokens']
    return batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32)).astype(jnp.float32)

  def loss_normaliser(self, batch: Batch) -> jax.Array:
    """What the batch's summed loss is divided by (see LossConfig): the real target
    tokens, the sequences with targets, or a constant. Microbatches divide by the whole
    batch's, so that their gradients add up to the big batch's."""
    weights = self.loss_weights(batch)
    factor = self.loss_config.loss_normalizing_factor
    if factor == 'NUM_REAL_TARGET_TOKENS':
      return jnp.maximum(weights.sum(), 1.0)
    if factor == 'AVERAGE_PER_SEQUENCE':
      _, sequence_weights = _per_sequence(weights, weights, _segments(batch, weights))
      return jnp.maximum((sequence_weights > 0).sum(), 1).astype(jnp.float32)
    return jnp.asarray(float(factor), jnp.float32)

  def loss_and_metrics(self, params, batch: Batch, dropout_rng=None, normaliser=None):
    """Returns (scalar loss to minimise, dict of metric sums for aggregation).

    The loss is the summed per-token (or per-sequence) loss over `normaliser`, by default
    this batch's `loss_normaliser`."""
    cfg = self.loss_config
    logits = self.logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = self.loss_weights(batch)
    token_loss, token_z = cross_entropy(logits, targets, cfg.z_loss, cfg.label_smoothing)
    loss_sum = (token_loss * weights).sum()
    segments = _segments(batch, weights)
    if cfg.loss_normalizing_factor == 'AVERAGE_PER_SEQUENCE':
      sequence_loss, sequence_weights = _per_sequence(token_loss * weights, weights, segments)
      summed = (sequence_loss / jnp.maximum(sequence_weights, 1.0)).sum()
    else:
      summed = loss_sum
    loss = summed / (self.loss_normaliser(batch) if normaliser is None else normaliser)
    correct = (logits.argmax(-1) == targets) | (weights == 0)
    seq_correct, seq_total = _sequence_correct(correct, segments)
    metrics = {
      'loss_sum': loss_sum,
      'z_loss_sum': (token_z * weights).sum(),
      'weight_sum': weights.sum(),
      'correct_tokens': (correct * weights).sum(),
      'correct_sequences': seq_correct,
      'num_sequences': seq_total,
    }
    return loss, metrics


def summarize(metric_sums: Mapping[str, float]) -> dict[str, float]:
  """Turns summed metrics into per-token loss and accuracies, the accuracies in percent
  (0-100) like t5's and seqio's metric functions (see metrics_log.is_percentage)."""
  tokens = max(float(metric_sums['weight_sum']), 1.0)
  sequences = max(float(metric_sums['num_sequences']), 1.0)
  return {
    'loss': float(metric_sums['loss_sum']) / tokens,
    'z_loss': float(metric_sums['z_loss_sum']) / tokens,
    'token_accuracy': 100.0 * float(metric_sums['correct_tokens']) / tokens,
    'sequence_accuracy': 100.0 * float(metric_sums['correct_sequences']) / sequences,
  }
