"""The training loop: read top to bottom, like Flax's wmt/lm1b examples.

    run_setup.prepare (validate, load the frozen base; writes nothing)
      ─► run_setup.initial_state (resume the newest checkpoint | initialise)
      ─► loop: jit(train_step) on a sharded batch, metrics every log_period,
         evaluation every eval_period (teacher-forced, and decoded with the task's seqio
         metrics), orbax checkpoint every checkpoint_period.

MODEL_DIR (local or gs://) is created only once everything has been checked.
"""

import contextlib
import math
import signal
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

import gin
from t5pt.checkpoints import run_checkpoints
from t5pt.model import models
from t5pt.model import network
from t5pt.model import prompts
from t5pt.model import steps
from t5pt.runtime import data
from t5pt.runtime import distributed
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime import metrics_log
from t5pt.runtime import partitioning
from t5pt.serving import evaluation
from t5pt.training import data_report
from t5pt.training import optimizers
from t5pt.training import run_setup


@gin.configurable(module='trainer')
def train(
  *,
  model_dir: str = gin.REQUIRED,
  mixture_or_task_name: str = gin.REQUIRED,
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
  train_steps: int = gin.REQUIRED,
  batch_size: int = gin.REQUIRED,
  network_config: network.T5Config = network.T5Config(),
  num_microbatches: int = 1,
  mixture_or_task_module: Optional[str] = None,
  initial_checkpoint_path: Optional[str] = None,
  use_cached_tasks: bool = False,
  pack: bool = False,
  trainable: Optional[Sequence[str]] = None,
  prompt_init: Callable[..., np.ndarray] = prompts.sampled_vocab,
  optimizer: Optional[optimizers.Optimizer] = None,
  loss: models.LossConfig = models.LossConfig(),
  partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
  frozen_dtype: str = 'float32',
  seed: int = 0,
  train_split: str = 'train',
  eval_split: Optional[str] = 'validation',
  eval_period: int = 1000,
  eval_at_start: bool = True,
  infer_eval: bool = True,
  checkpoint_period: int = 1000,
  keep_checkpoints: Optional[int] = 3,
  log_period: int = 50,
  progress_bar: bool = True,
) -> dict:
  """Trains the TRAINABLE parameters of a T5 on a seqio task; returns a summary dict.

  Frozen parameters come from `initial_checkpoint_path` (random when None, which is how
  a base model is trained from scratch with trainable=['.*']) and are never saved.
  `trainable` (regexes over parameter paths) defaults to what the tuning method adds:
  the prompt, LoRA factors, IA3 scales, deep-prompt prefixes. `num_microbatches` splits
  each batch into that many parts run one after another before one update (the same
  update, less activation memory; see steps.build_train_step).
  """
  config = run_setup.TrainConfig(**locals())
  setup = run_setup.prepare(config)
  start = run_setup.initial_state(setup)
  params, opt_state, start_step = start.params, start.opt_state, start.step
  _say(
    f'mesh: data={setup.mesh.shape["data"]} x model={setup.mesh.shape["model"]} over '
    f'{setup.mesh.devices.size} {jax.default_backend()} device(s)'
  )
  if jax.process_index() == 0 and not use_cached_tasks:
    for line in data_report.lines(
      mixture_or_task_name,
      train_split,
      task_feature_lengths,
      setup.network_config.prompt_length,
      packed=setup.train_ds if pack else None,
    ):
      _say(line)

  # ---- Nothing above wrote to disk; from here on the run directory exists. ----
  with _write_errors_explained(model_dir):
    fs.makedirs(model_dir)
    if jax.process_index() == 0:
      fs.write_text(fs.join(model_dir, 'config.gin'), gin.config_str())
      for step in start.damaged_steps:  # Out of the way of this run's own saves.
        _say(
          f'Set aside the damaged checkpoint_{step} as {run_checkpoints.set_aside(model_dir, step)}'
        )
    distributed.barrier('t5pt train: run directory ready')
    checkpointer = run_checkpoints.RunCheckpointer(model_dir, keep_checkpoints)
    log = metrics_log.MetricsLog(model_dir, resume_step=start_step if setup.resume_from else None)
    evaluator = evaluation.RunEvaluator(setup, log)
    if start_step:
      _say(f'Resuming {model_dir} from step {start_step}.')
    train_step = jax.jit(
      steps.build_train_step(
        setup.model,
        setup.optimizer.transform,
        run_setup.dropout_rng(setup),
        num_microbatches,
      ),
      donate_argnums=(0, 1),
    )
    summary = {
      'model_dir': model_dir,
      'start_step': start_step,
      'trainable_parameters': setup.trainable_parameters,
    }
    if eval_at_start and not start_step:
      summary.update(evaluator.evaluate(0, params, suffix='_at_start'))

    batches = data.iterate_batches(
      setup.train_ds, batch_size, drop_remainder=True, skip_batches=start.batches_consumed
    )
    bar = tqdm.tqdm(
      total=train_steps,
      initial=start_step,
      unit='step',
      desc='train',
      disable=not progress_bar or jax.process_index() != 0,
      mininterval=1.0,
      dynamic_ncols=True,
    )
    meter = _Throughput(start_step)
    sums = None
    finite = jax.jit(_all_finite)
    with _StopSignals() as stop, contextlib.closing(checkpointer):
      for step in range(start_step, train_steps):
        batch = next(batches)
        meter.count(batch)
        params, opt_state, metrics = train_step(
          params, opt_state, setup.frozen_tree, setup.to_device(batch), step
        )
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        done = step + 1
        meter.started(done, metrics)
        bar.update(1)
        stopping = stop.reached(done)
        if done % log_period == 0 or done == train_steps or stopping:
          values = models.summarize(jax.device_get(sums))
          values['learning_rate'] = float(setup.optimizer.learning_rate(step))
          values.update(meter.rates(done))
          if 'tokens_per_second' in values:
            bar.set_postfix(
              loss=f"{values['loss']:.3f}",
              acc=f"{values['token_accuracy']:.1f}%",
              tok_s=f"{values['tokens_per_second']:.0f}",
            )
          log.write('train', done, values)
          summary['train'] = values
          sums = None
          if not math.isfinite(values['loss']):
            raise _diverged(done, log_period, checkpointer)
        if done % checkpoint_period == 0 or done == train_steps or stopping:
          if not finite((params, opt_state)):
            raise _diverged(done, log_period, checkpointer)
          checkpointer.save(params, opt_state, setup.run_meta(done))
        if stopping:
          bar.close()
          checkpointer.wait_until_finished()
          _say(
            f'Stopped by {stop.received} after step {done}: checkpoint_{done} saved in '
            f'{model_dir}. Rerun the same command to resume.'
          )
          summary.update(params=distributed.fetch(params), step=done, stopped_by=stop.received)
          return summary
        if done % eval_period == 0 or done == train_steps:
          summary.update(evaluator.evaluate(done, params))
      bar.close()
      checkpointer.wait_until_finished()
    if 'eval' not in summary:  # Resumed at the last step: report where the run stands.
      summary.update(evaluator.evaluate(train_steps, params))
    summary['params'] = distributed.fetch(params)
    summary['step'] = train_steps
    return summary


@contextlib.contextmanager
def _write_errors_explained(model_dir: str):
  """A full disk, a read-only or vanished MODEL_DIR, a lost permission: one message saying
  what still holds (orbax never finishes a checkpoint it could not write completely)."""
  try:
    yield
  except (OSError, ValueError) as e:
    if not _is_storage_error(e):
      raise
    newest = run_checkpoints.latest_step(model_dir) if fs.isdir(model_dir) else None
    kept = (
      f'the newest complete checkpoint, checkpoint_{newest}, is intact'
      if newest is not None
      else 'no checkpoint was complete'
    )
    raise errors.TrainingStopped(
      f'Writing to MODEL_DIR={model_dir} failed: {e}. Training stopped and {kept} (an '
      'unfinished one is removed when the run restarts). Free space or fix the '
      'permissions, then rerun the same command to resume.'
    ) from e


def _is_storage_error(error: Exception) -> bool:
  """An OSError, or tensorstore's (orbax's array writer) ValueError for the same causes."""
  return isinstance(error, OSError) or any(
    mark in str(error) for mark in ('os_error_code', 'RESOURCE_EXHAUSTED', 'PERMISSION_DENIED')
  )


def _all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in leaves]))


def _diverged(step: int, log_period: int, checkpointer) -> errors.TrainingStopped:
  checkpointer.wait_until_finished()
  newest = checkpointer.latest_step()
  kept = (
    f'the newest checkpoint, checkpoint_{newest}, holds finite values'
    if newest is not None
    else 'no checkpoint was written'
  )
  return errors.TrainingStopped(
    f'The loss or the trained parameters became NaN or Inf by step {step} (checked every '
    f'LOG_PERIOD={log_period} steps and before each checkpoint); training stopped and '
    f'{kept}. Lower the learning rate (OPTIMIZER), check the data for empty targets, or '
    'keep activations in float32; the rerun resumes from that checkpoint.'
  )


class _StopSignals:
  """SIGTERM (a preemption notice) and SIGINT ask the loop to finish its step, save a
  checkpoint there and return. On several hosts JAX's preemption service catches
  SIGTERM and names one step for every host (`reached_preemption_sync_point`)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS if jax.process_count() == 1 else (signal.SIGINT,):
        self._previous[sig] = signal.signal(sig, self._note)
    return self

  def _note(self, signum, frame) -> None:
    del frame
    if self.received and signum == signal.SIGINT:  # A second Ctrl-C: stop now.
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.received = self.received or 'SIGTERM'
      return True
    return self.received is not None and jax.process_count() == 1

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Throughput:
  """Steps/s and non-padding tokens/s since the last report, timed from the end of the
  first (compiling) step."""

  def __init__(self, start_step: int):
    self._tokens, self._tick, self._from = 0, None, start_step

  def count(self, batch: Mapping[str, np.ndarray]) -> None:
    self._tokens += int(
      (batch['encoder_input_tokens'] > 0).sum() + (batch['decoder_target_tokens'] > 0).sum()
    )

  def started(self, done: int, metrics) -> None:
    if self._tick is None:
      jax.block_until_ready(metrics)
      self._tick, self._tokens, self._from = time.perf_counter(), 0, done

  def rates(self, done: int) -> dict[str, float]:
    """The rates since the last call (empty right after the compiling step)."""
    elapsed = time.perf_counter() - self._tick
    rates = {}
    if done > self._from:
      rates = dict(
        steps_per_second=(done - self._from) / elapsed, tokens_per_second=self._tokens / elapsed
      )
    self._tokens, self._tick, self._from = 0, time.perf_counter(), done
    return rates


def _say(message: str) -> None:
  """Prints above the progress bar (process 0 only)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)
