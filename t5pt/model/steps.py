"""The jitted-step bodies: one training step and one teacher-forced eval step.

Pure JAX/optax on (trainable, frozen) parameter trees, with no data pipeline, checkpoint
or TensorFlow import, so benchmarks and other drivers can use the exact step that
`t5pt.training.trainer` runs.
"""

import jax
import jax.numpy as jnp
import optax

from t5pt.model import models
from t5pt.runtime import partitioning


def combine(frozen_tree, params):
  """The full parameter tree from its frozen and trainable parts (both nested dicts)."""
  return partitioning.unflatten(
    {**partitioning.flatten(frozen_tree), **partitioning.flatten(params)}
  )


def build_train_step(model: models.EncoderDecoderModel, tx, dropout_rng, num_microbatches: int = 1):
  """(params, opt_state, frozen, batch, step) -> (params, opt_state, metric sums).

  Gradients are taken with respect to `params` (the trainable part) only: the frozen
  tree enters as a constant, so it is never differentiated and has no optimizer state.

  With `num_microbatches` M > 1 the batch [B, ...] is processed as M microbatches of B/M
  rows, one after another, and their gradients are summed before the single optimizer
  update: the same update as one batch of B (each microbatch's loss is divided by the
  whole batch's normaliser), with activations for B/M rows alive at a time. Microbatch i
  holds rows i, i + M, i + 2M, ..., so each device keeps working on rows it already has.
  """

  def train_step(params, opt_state, frozen_tree, batch, step):
    rng = jax.random.fold_in(dropout_rng, step)
    normaliser = model.loss_normaliser(batch)

    def loss_fn(p, rows, rows_rng):
      return model.loss_and_metrics(combine(frozen_tree, p), rows, rows_rng, normaliser)

    if num_microbatches == 1:
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    else:
      grads, metrics = _accumulated(loss_fn, params, batch, rng, num_microbatches)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step


def _accumulated(loss_fn, params, batch, rng, num_microbatches: int):
  """Gradients and metric sums of `loss_fn` summed over the microbatches, run in a loop."""

  def microbatches(x):  # [B, ...] -> [M, B/M, ...], microbatch i = rows i::M
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def add_one(sums, indexed_rows):
    index, rows = indexed_rows
    (_, metrics), grads = grad_fn(params, rows, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, sums, (grads, metrics)), None

  split = jax.tree.map(microbatches, batch)
  (_, metrics), grads = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], split), rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads, metrics))
  sums, _ = jax.lax.scan(add_one, zeros, (jnp.arange(num_microbatches), split))
  return sums


def build_eval_step(model: models.EncoderDecoderModel):
  """(params, frozen, batch) -> metric sums, without dropout."""
  return lambda params, frozen_tree, batch: model.loss_and_metrics(
    combine(frozen_tree, params), batch
  )[1]
