"""The training loop: read top to bottom, like Flax's wmt/lm1b examples.

    validate config ─► load frozen base ─► (resume | initialise trainable) ─► loop:
        jit(train_step) on a sharded batch, metrics every log_period,
        eval every eval_period (teacher-forced, and decoded with the task's seqio metrics),
        orbax checkpoint every checkpoint_period.

Everything that can fail because of user input is checked before MODEL_DIR is touched.
"""

import dataclasses
import json
import os
import time
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from t5pt import adapters
from t5pt import checkpoint_import
from t5pt import checkpoints
from t5pt import data
from t5pt import evaluation
from t5pt import models
from t5pt import network
from t5pt import optimizers
from t5pt import partitioning
from t5pt import prompts
from t5pt import quantization
from t5pt import steps
from t5pt import vocabularies
from t5pt import errors
from t5pt.errors import UserError



class MetricsLog:
  """Appends metrics to MODEL_DIR/metrics.jsonl and TensorBoard event files."""

  def __init__(self, model_dir: str):
    self._path = os.path.join(model_dir, 'metrics.jsonl')
    self._writers = {}
    self._model_dir = model_dir

  def write(self, split: str, step: int, values: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps({'split': split, 'step': step, **values}) + '\n')
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(
          os.path.join(self._model_dir, split))
    with self._writers[split].as_default():
      for name, value in values.items():
        tf.summary.scalar(name, value, step=step)
    self._writers[split].flush()


def _abstract(shape_dtype, sharding, dtype=None):
  return jax.ShapeDtypeStruct(shape_dtype.shape, dtype or shape_dtype.dtype,
                              sharding=sharding)


@gin.configurable(module='trainer')
def train(*,
          model_dir: str = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          network_config: network.T5Config = network.T5Config(),
          mixture_or_task_module: Optional[str] = None,
          initial_checkpoint_path: Optional[str] = None,
          use_cached_tasks: bool = False,
          pack: bool = False,
          trainable: Sequence[str] = (network.PROMPT_PATH,),
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
          progress_bar: bool = True) -> dict:
  """Trains the TRAINABLE parameters of a T5 on a seqio task; returns a summary dict.

  Frozen parameters come from `initial_checkpoint_path` (random when None, which is how
  a base model is trained from scratch with trainable=['.*']) and are never saved.
  """
  optimizer = optimizer or optimizers.adafactor()
  # ---- Validate everything a user can get wrong before writing anything. ----
  errors.require_macros(MODEL_DIR=model_dir, MIXTURE_OR_TASK_NAME=mixture_or_task_name)
  data.import_task_modules(mixture_or_task_module)
  prompt_length = network_config.prompt_length
  data.converter_lengths(task_feature_lengths, prompt_length)
  base = (checkpoint_import.open_checkpoint(initial_checkpoint_path)
          if initial_checkpoint_path else None)
  if base:
    network_config = base.reconcile(network_config)
  network_config.require_complete()
  vocabulary = data.vocabulary(mixture_or_task_name)
  vocabularies.check_fits(vocabulary, network_config.vocab_size,
                          f'MIXTURE_OR_TASK_NAME={mixture_or_task_name!r}',
                          initial_checkpoint_path)
  mesh = partition.make_mesh()
  _say(f'mesh: data={mesh.shape["data"]} x model={mesh.shape["model"]} over '
       f'{mesh.devices.size} {jax.default_backend()} device(s)')
  host_batch_size = partitioning.host_batch_size(batch_size, mesh)
  train_ds = data.get_dataset(
      mixture_or_task_name, task_feature_lengths, train_split, prompt_length=prompt_length,
      shuffle=True, seed=seed, repeat=True, pack=pack, use_cached=use_cached_tasks,
      shard_index=jax.process_index(), num_shards=jax.process_count())
  eval_ds = None
  if eval_split:
    eval_ds = data.get_dataset(
        mixture_or_task_name, task_feature_lengths, eval_split, prompt_length=prompt_length,
        shuffle=False, repeat=False, pack=False, use_cached=use_cached_tasks,
        shard_index=jax.process_index(), num_shards=jax.process_count())

  model = models.EncoderDecoderModel(network_config, loss)
  input_length = task_feature_lengths['inputs'] - prompt_length
  init_fn = lambda rng: model.init(rng, input_length, task_feature_lengths['targets'])
  boxed = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = partitioning.param_shardings(boxed, mesh, partition.logical_axis_rules)
  shapes = partitioning.flatten(nn.unbox(boxed))
  trainable_paths, frozen_paths = partitioning.split_trainable(list(shapes), trainable)
  _check_adapters(network_config, list(shapes), frozen_paths)
  _check_int8(network_config, shapes, trainable_paths, base)
  frozen_targets = {k: _abstract(shapes[k], shardings[k], quantization.storage_dtype(
      k, shapes[k].dtype, frozen_dtype)) for k in frozen_paths}

  init_rng, prompt_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  if base:
    frozen = base.load(frozen_targets, progress=progress_bar and jax.process_index() == 0)
  else:
    if frozen_paths:
      logging.warning('No INITIAL_CHECKPOINT_PATH: the frozen parameters are random.')
    frozen = _initialise(init_fn, init_rng, frozen_paths, shardings, frozen_dtype)

  tx = optimizer.transform
  resume_step = checkpoints.latest_step(model_dir)
  if resume_step == 0:
    raise UserError(f'{model_dir} holds an imported adapter (checkpoint_0, from '
                    'python -m t5pt.peft_import), which has no optimizer state to resume; '
                    'train into a new MODEL_DIR.')
  if not resume_step:  # Initialise now: a bad initialiser binding must fail before writing.
    params = _initial_trainable(init_fn, init_rng, trainable_paths, shardings, frozen,
                                prompt_init, prompt_rng, vocabulary)

  # ---- Nothing above wrote to disk; from here on the run directory exists. ----
  tf.io.gfile.makedirs(model_dir)
  checkpointer = checkpoints.RunCheckpointer(model_dir, keep_checkpoints)
  log = MetricsLog(model_dir)
  start_step, batches_consumed = resume_step or 0, 0
  if resume_step:
    meta = checkpoints.read_meta(model_dir, start_step)
    if sorted(meta['trainable']) != sorted(trainable_paths):
      raise UserError(f'{model_dir} was trained with trainable parameters '
                      f'{meta["trainable"]} but TRAINABLE now selects {trainable_paths}; '
                      'use a new MODEL_DIR or restore the old TRAINABLE.')
    batches_consumed = meta['batches_consumed']
    abstract_params = partitioning.unflatten(
        {k: _abstract(shapes[k], shardings[k]) for k in trainable_paths})
    init_opt = jax.jit(tx.init).lower(abstract_params).compile()
    abstract_opt = jax.tree.map(_abstract, jax.eval_shape(tx.init, abstract_params),
                                init_opt.output_shardings)
    params, opt_state = checkpointer.restore(start_step, abstract_params, abstract_opt)
    _say(f'Resuming {model_dir} from step {start_step}.')
  else:
    opt_state = jax.jit(tx.init)(params)
  frozen_tree = partitioning.unflatten(frozen)
  _write_text_atomically(os.path.join(model_dir, 'config.gin'), gin.config_str())

  batch_sharding = partitioning.batch_sharding(mesh)
  to_device = lambda b: {k: jax.make_array_from_process_local_data(batch_sharding, v)
                         for k, v in b.items()}
  p_train_step = jax.jit(steps.build_train_step(model, tx, dropout_rng), donate_argnums=(0, 1))
  p_eval_step = jax.jit(steps.build_eval_step(model))

  infer_evaluator = None
  if infer_eval and eval_split:
    infer_evaluator = evaluation.InferenceEvaluator(
        model, mesh, batch_size, mixture_or_task_name, task_feature_lengths, eval_split,
        use_cached_tasks)
    infer_evaluator = infer_evaluator if infer_evaluator.has_metrics else None
  summary = {'model_dir': model_dir, 'start_step': start_step,
             'trainable_parameters': int(sum(np.prod(shapes[k].shape)
                                             for k in trainable_paths))}

  def evaluate(step: int, key: str) -> None:
    """Teacher-forced metrics (summary[key]) and, when the task declares metric_fns,
    decoded ones from seqio's Evaluator (summary['infer_' + key])."""
    if eval_ds is None:
      return
    sums = None
    for batch in data.iterate_batches(eval_ds, host_batch_size, drop_remainder=False):
      m = p_eval_step(params, frozen_tree, to_device(batch))
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    summary[key] = models.summarize(jax.device_get(sums))
    log.write('eval', step, summary[key])
    _say(f'eval @ step {step}: ' +
         ', '.join(f'{k}={v:.4f}' for k, v in summary[key].items()))
    if infer_evaluator:
      metrics = infer_evaluator.evaluate(steps.merge(frozen_tree, params), step)
      flat = {(f'{task}/{name}' if len(metrics) > 1 else name): value
              for task, values in metrics.items() for name, value in values.items()}
      log.write('infer_eval', step, flat)
      _say(f'decoded eval @ step {step}: ' +
           ', '.join(f'{k}={v:.4f}' for k, v in flat.items()))
      summary['infer_' + key] = metrics

  if eval_at_start and not start_step:
    evaluate(0, 'eval_at_start')

  batches = data.iterate_batches(train_ds, host_batch_size, drop_remainder=True,
                                 skip_batches=batches_consumed)
  bar = tqdm.tqdm(total=train_steps, initial=start_step, unit='step', desc='train',
                  disable=not progress_bar or jax.process_index() != 0, mininterval=1.0,
                  dynamic_ncols=True)
  # Throughput is timed from the end of the first (compiling) step; metrics include it.
  sums, tokens, tick, timed_from = None, 0, None, start_step
  for step in range(start_step, train_steps):
    batch = next(batches)
    tokens += int((batch['encoder_input_tokens'] > 0).sum() +
                  (batch['decoder_target_tokens'] > 0).sum()) * jax.process_count()
    params, opt_state, metrics = p_train_step(params, opt_state, frozen_tree,
                                              to_device(batch), step)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    done = step + 1
    if tick is None:
      jax.block_until_ready(metrics)
      tick, tokens, timed_from = time.perf_counter(), 0, done
    bar.update(1)
    if done % log_period == 0 or done == train_steps:
      values = models.summarize(jax.device_get(sums))
      values['learning_rate'] = float(optimizer.learning_rate(step))
      if done > timed_from:
        elapsed = time.perf_counter() - tick
        values.update(steps_per_second=(done - timed_from) / elapsed,
                      tokens_per_second=tokens / elapsed)
        bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['token_accuracy']:.3f}",
                        tok_s=f"{values['tokens_per_second']:.0f}")
      log.write('train', done, values)
      summary['train'] = values
      sums, tokens, tick, timed_from = None, 0, time.perf_counter(), done
    if done % checkpoint_period == 0 or done == train_steps:
      checkpointer.save(done, params, opt_state,
                        {'step': done, 'batches_consumed': done, 'seed': seed,
                         'trainable': trainable_paths,
                         'initial_checkpoint_path': _absolute(initial_checkpoint_path),
                         'mixture_or_task_name': mixture_or_task_name,
                         'mixture_or_task_module': mixture_or_task_module,
                         'task_feature_lengths': dict(task_feature_lengths),
                         'network_config': dataclasses.asdict(network_config)})
    if eval_ds is not None and (done % eval_period == 0 or done == train_steps):
      evaluate(done, 'eval')
  bar.close()
  checkpointer.wait_until_finished()
  checkpointer.close()
  if 'eval' not in summary and eval_ds is not None:
    evaluate(train_steps, 'eval')
  summary['params'] = jax.device_get(params)
  summary['step'] = train_steps
  return summary


def _initial_trainable(init_fn, init_rng, trainable_paths, shardings, frozen, prompt_init,
                       prompt_rng, vocabulary) -> dict:
  """Fresh trainable parameters (nested): random, with the prompt from `prompt_init`."""
  flat = _initialise(init_fn, init_rng, trainable_paths, shardings, 'float32')
  if network.PROMPT_PATH in flat:
    embedding = frozen.get(network.EMBEDDING_PATH, flat.get(network.EMBEDDING_PATH))
    value = prompt_init(prompt_rng, flat[network.PROMPT_PATH].shape,
                        embedding=np.asarray(embedding, np.float32), vocabulary=vocabulary)
    flat[network.PROMPT_PATH] = jax.device_put(jnp.asarray(value, jnp.float32),
                                       shardings[network.PROMPT_PATH])
  return partitioning.unflatten(flat)


def _initialise(init_fn, rng, paths: Sequence[str], shardings, dtype) -> dict:
  """Randomly initialises only `paths` (XLA prunes the rest of the init computation)."""
  if not paths:
    return {}
  def select(rng):
    flat = partitioning.flatten(nn.unbox(init_fn(rng)))
    return {k: flat[k].astype(dtype) for k in paths}
  return jax.jit(select, out_shardings={k: shardings[k] for k in paths})(rng)


def _check_adapters(config: network.T5Config, paths: Sequence[str],
                    frozen_paths: Sequence[str]) -> None:
  """Adapter rules must select kernels, and adapters must be trained (a frozen one would
  be loaded from a base that has none)."""
  adapters.check_rules_match(config.adapters, [p for p in paths if p.endswith('/kernel')])
  frozen_adapters = [p for p in frozen_paths if adapters.is_adapter(p)]
  if frozen_adapters:
    raise UserError(f'{len(frozen_adapters)} adapter parameter(s), e.g. '
                    f'{frozen_adapters[0]!r}, are not in TRAINABLE. Add their pattern '
                    "(e.g. '.*/lora_[ab]' or '.*/ia3_scale') to TRAINABLE, or drop the "
                    'adapter rules.')


def _check_int8(config: network.T5Config, shapes, trainable_paths, base) -> None:
  if not config.int8_kernels:
    return
  if not base:
    raise UserError('network.T5Config.int8_kernels quantises a loaded base; set '
                    'INITIAL_CHECKPOINT_PATH (a random base has nothing to quantise).')
  trained = [p for p in trainable_paths if jnp.dtype(shapes[p].dtype) == jnp.int8
             or quantization.is_scale(p)]
  if trained:
    raise UserError(f'TRAINABLE selects {trained[0]!r}, but with int8_kernels the kernels '
                    'are frozen int8; train a prompt or adapters instead.')


def _absolute(path: Optional[str]) -> Optional[str]:
  return path if not path or '://' in path else os.path.abspath(path)


def _say(message: str) -> None:
  """Prints above the progress bar (process 0 only)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _write_text_atomically(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
