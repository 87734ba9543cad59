"""Optimizers (optax) as gin-configurable factories returning (transform, lr schedule)."""

import re
from typing import Callable, NamedTuple, Optional, Sequence

import optax
from flax import traverse_util

import gin
from t5pt.runtime import checks
from t5pt.runtime.errors import UserError


class Optimizer(NamedTuple):
  transform: optax.GradientTransformation
  learning_rate: Callable[[int], float]


def _check_clipping(clip_grad_norm, name: str) -> None:
  if clip_grad_norm is not None:
    checks.number(clip_grad_norm, name, 0.0, float('inf'))


def _with_clipping(tx: optax.GradientTransformation, clip_grad_norm: Optional[float]):
  if not clip_grad_norm:
    return tx
  return optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)


@gin.configurable(module='optimizers')
def adafactor(
  learning_rate: float = 0.3,
  decay_rate: float = 0.8,
  weight_decay_rate: Optional[float] = 1e-5,
  multiply_by_parameter_scale: bool = False,
  clipping_threshold: Optional[float] = 1.0,
  clip_grad_norm: Optional[float] = None,
) -> Optimizer:
  """Lester et al.'s prompt-tuning recipe: constant lr 0.3, decay 0.8, wd 1e-5, no scaling."""
  checks.positive_number(learning_rate, 'optimizers.adafactor.learning_rate')
  checks.number(decay_rate, 'optimizers.adafactor.decay_rate', 0.0, 1.0)
  if weight_decay_rate is not None:
    checks.number(weight_decay_rate, 'optimizers.adafactor.weight_decay_rate', 0.0, 1.0)
  if clipping_threshold is not None:
    checks.positive_number(clipping_threshold, 'optimizers.adafactor.clipping_threshold')
  _check_clipping(clip_grad_norm, 'optimizers.adafactor.clip_grad_norm')
  schedule = optax.constant_schedule(learning_rate)
  tx = optax.adafactor(
    schedule,
    decay_rate=decay_rate,
    multiply_by_parameter_scale=multiply_by_parameter_scale,
    clipping_threshold=clipping_threshold,
    weight_decay_rate=weight_decay_rate,
  )
  return Optimizer(_with_clipping(tx, clip_grad_norm), schedule)


@gin.configurable(module='optimizers')
def adamw(
  peak_learning_rate: float = 1e-3,
  warmup_steps: int = 100,
  decay_steps: int = gin.REQUIRED,
  end_learning_rate: float = 1e-5,
  weight_decay: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
  clip_grad_norm: Optional[float] = 1.0,
) -> Optimizer:
  """AdamW with linear warmup and cosine decay to `end_learning_rate`, plus clipping."""
  checks.positive_number(peak_learning_rate, 'optimizers.adamw.peak_learning_rate')
  checks.integer(warmup_steps, 'optimizers.adamw.warmup_steps', 0)
  checks.integer(decay_steps, 'optimizers.adamw.decay_steps (default: TRAIN_STEPS)', 1)
  checks.number(end_learning_rate, 'optimizers.adamw.end_learning_rate', 0.0, float('inf'))
  checks.number(weight_decay, 'optimizers.adamw.weight_decay', 0.0, 1.0)
  checks.number(b1, 'optimizers.adamw.b1', 0.0, 1.0)
  checks.number(b2, 'optimizers.adamw.b2', 0.0, 1.0)
  _check_clipping(clip_grad_norm, 'optimizers.adamw.clip_grad_norm')
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, peak_learning_rate, warmup_steps, max(decay_steps, warmup_steps + 1), end_learning_rate
  )
  tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
  return Optimizer(_with_clipping(tx, clip_grad_norm), schedule)


@gin.configurable(module='optimizers')
def by_parameter(groups: Sequence[tuple[str, Optimizer]] = gin.REQUIRED) -> Optimizer:
  """One optimizer per group of trainable parameters: [(path regex, optimizer), ...],
  the first full match wins. E.g. prompt + LoRA: Adafactor at lr 0.3 for the prompt
  (Lester et al.) and AdamW for LoRA (Hu et al.). The learning rate logged is the first
  group's."""
  if not groups:
    raise UserError('optimizers.by_parameter.groups is empty; give [(regex, optimizer), ...].')
  patterns = [re.compile(pattern) for pattern, _ in groups]

  def labels(params):
    flat = traverse_util.flatten_dict(params, sep='/')

    def label(path):
      for i, pattern in enumerate(patterns):
        if pattern.fullmatch(path):
          return str(i)
      raise UserError(
        f'Trainable parameter {path!r} matches no optimizers.by_parameter '
        f'group {[p for p, _ in groups]}; add a pattern for it.'
      )

    return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep='/')

  transforms = {str(i): optimizer.transform for i, (_, optimizer) in enumerate(groups)}
  return Optimizer(optax.multi_transform(transforms, labels), groups[0][1].learning_rate)
