"""The jitted-step bodies: one training step and one teacher-forced eval step.

Pure JAX/optax on (trainable, frozen) parameter trees, with no data pipeline, checkpoint
or TensorFlow import, so benchmarks and other drivers can use the exact step that
`t5pt.trainer` runs.
"""

import jax
import optax

from t5pt import models
from t5pt import partitioning


def combine(frozen_tree, params):
  """The full parameter tree from its frozen and trainable parts (both nested dicts)."""
  return partitioning.unflatten(
    {**partitioning.flatten(frozen_tree), **partitioning.flatten(params)}
  )


def build_train_step(model: models.EncoderDecoderModel, tx, dropout_rng):
  """(params, opt_state, frozen, batch, step) -> (params, opt_state, metric sums).

  Gradients are taken with respect to `params` (the trainable part) only: the frozen
  tree enters as a constant, so it is never differentiated and has no optimizer state.
  """

  def train_step(params, opt_state, frozen_tree, batch, step):
    def loss_fn(p):
      return model.loss_and_metrics(
        combine(frozen_tree, p), batch, jax.random.fold_in(dropout_rng, step)
      )

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step


def build_eval_step(model: models.EncoderDecoderModel):
  """(params, frozen, batch) -> metric sums, without dropout."""
  return lambda params, frozen_tree, batch: model.loss_and_metrics(
    combine(frozen_tree, params), batch
  )[1]
