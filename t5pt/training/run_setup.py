"""Everything a training run needs, validated and built before anything is written.

`prepare(TrainConfig)` checks every value a user can get wrong (macros, task, lengths,
base checkpoint, TRAINABLE, adapters, int8, batch size against the mesh), loads the
frozen base and returns a frozen `RunSetup`; `initial_state` then restores the newest
checkpoint or initialises the trainable parameters (a bad prompt initialiser fails here).
Neither writes to MODEL_DIR; the trainer creates it only after both succeed.
"""

import dataclasses
import functools
import itertools
import sys
from typing import Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from t5pt.checkpoints import opening
from t5pt.checkpoints import run_checkpoints
from t5pt.model import methods
from t5pt.model import models
from t5pt.model import network
from t5pt.model import quantization
from t5pt.runtime import checks
from t5pt.runtime import data
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime import vocabularies
from t5pt.runtime.errors import UserError
from t5pt.training import optimizers


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The settings of a training run: trainer.train's gin parameters, documented there."""

  model_dir: str
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  train_steps: int
  batch_size: int
  network_config: network.T5Config
  num_microbatches: int
  mixture_or_task_module: Optional[str]
  initial_checkpoint_path: Optional[str]
  use_cached_tasks: bool
  pack: bool
  trainable: Optional[Sequence[str]]
  prompt_init: Callable[..., np.ndarray]
  optimizer: Optional[optimizers.Optimizer]
  loss: models.LossConfig
  partition: partitioning.PartitionConfig
  frozen_dtype: str
  seed: int
  train_split: str
  eval_split: Optional[str]
  eval_period: int
  eval_at_start: bool
  infer_eval: bool
  checkpoint_period: int
  keep_checkpoints: Optional[int]
  log_period: int
  progress_bar: bool


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """A validated run: its model, mesh, data and frozen base, ready to train."""

  config: TrainConfig
  network_config: network.T5Config  # reconciled with the base checkpoint
  optimizer: optimizers.Optimizer
  model: models.EncoderDecoderModel
  mesh: jax.sharding.Mesh
  vocabulary: seqio.Vocabulary
  train_ds: tf.data.Dataset
  eval_ds: Optional[tf.data.Dataset]
  shapes: Mapping[str, jax.ShapeDtypeStruct]  # every parameter, by path
  shardings: Mapping[str, jax.sharding.Sharding]
  trainable_paths: tuple[str, ...]
  frozen_tree: dict  # nested, on the mesh
  init_fn: Callable
  resume_from: Optional[run_checkpoints.RunMeta]  # the newest checkpoint's record

  @property
  def trainable_parameters(self) -> int:
    return int(sum(np.prod(self.shapes[k].shape) for k in self.trainable_paths))

  @functools.cached_property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return partitioning.batch_sharding(self.mesh)

  def to_device(self, batch: Mapping[str, np.ndarray]) -> dict:
    """A global batch [batch, length] (the same on every host) sharded over the mesh."""
    return partitioning.place_batch(batch, self.batch_sharding)

  def run_meta(self, step: int) -> run_checkpoints.RunMeta:
    """The record saved with the checkpoint of `step`."""
    c = self.config
    return run_checkpoints.RunMeta(
      step=step,
      batches_consumed=step,
      seed=c.seed,
      trainable=self.trainable_paths,
      network_config=self.network_config,
      initial_checkpoint_path=(
        fs.absolute(c.initial_checkpoint_path) if c.initial_checkpoint_path else None
      ),
      mixture_or_task_name=c.mixture_or_task_name,
      mixture_or_task_module=c.mixture_or_task_module,
      task_feature_lengths=dict(c.task_feature_lengths),
      batch_size=c.batch_size,
    )


def check_values(config: TrainConfig) -> None:
  """Type and range of every value trainer.train was given (see t5pt/runtime/checks.py)."""
  errors.require_macros(
    MODEL_DIR=config.model_dir, MIXTURE_OR_TASK_NAME=config.mixture_or_task_name
  )
  c, b = config, 'trainer.train.'
  checks.string(c.model_dir, f'MODEL_DIR ({b}model_dir)')
  checks.string(c.mixture_or_task_name, f'MIXTURE_OR_TASK_NAME ({b}mixture_or_task_name)')
  checks.module_names(
    c.mixture_or_task_module, f'MIXTURE_OR_TASK_MODULE ({b}mixture_or_task_module)'
  )
  checks.feature_lengths(c.task_feature_lengths, f'TASK_FEATURE_LENGTHS ({b}task_feature_lengths)')
  checks.integer(c.train_steps, f'TRAIN_STEPS ({b}train_steps)', 0)  # 0: evaluate the start
  checks.batch_and_microbatches(c.batch_size, c.num_microbatches)
  checks.string(
    c.initial_checkpoint_path,
    f'INITIAL_CHECKPOINT_PATH ({b}initial_checkpoint_path)',
    optional=True,
  )
  for macro, name in (
    ('USE_CACHED_TASKS', 'use_cached_tasks'),
    ('PACK', 'pack'),
    ('INFER_EVAL', 'infer_eval'),
    (None, 'eval_at_start'),
    (None, 'progress_bar'),
  ):
    checks.boolean(getattr(c, name), f'{macro} ({b}{name})' if macro else b + name)
  checks.regexes(c.trainable, f'TRAINABLE ({b}trainable)')
  checks.float_dtype(c.frozen_dtype, f'FROZEN_DTYPE ({b}frozen_dtype)')
  checks.integer(c.seed, f'SEED ({b}seed)', 0)
  checks.string(c.train_split, f'{b}train_split')
  checks.string(c.eval_split, f'{b}eval_split', optional=True)
  for macro, name in (
    ('EVAL_PERIOD', 'eval_period'),
    ('CHECKPOINT_PERIOD', 'checkpoint_period'),
    ('LOG_PERIOD', 'log_period'),
  ):
    checks.integer(getattr(c, name), f'{macro} ({b}{name})', 1)
  checks.optional_integer(c.keep_checkpoints, f'{b}keep_checkpoints', 1)
  c.network_config.check()
  checks.partition_config(c.partition)
  checks.number(c.loss.z_loss, 'models.LossConfig.z_loss', 0.0, float('inf'))
  checks.number(c.loss.label_smoothing, 'models.LossConfig.label_smoothing', 0.0, 1.0)
  if c.optimizer is not None and not isinstance(c.optimizer, optimizers.Optimizer):
    raise UserError(
      f'OPTIMIZER ({b}optimizer) = {c.optimizer!r}: must be an optimizer, e.g. '
      '@optimizers.adafactor() or @optimizers.adamw() (note the @ and the parentheses).'
    )
  if not callable(c.prompt_init):
    raise UserError(
      f'PROMPT_INIT ({b}prompt_init) = {c.prompt_init!r}: must be an initialiser, e.g. '
      '@prompts.sampled_vocab or @prompts.from_file (note the @).'
    )
  fs.check_output_dir(c.model_dir, 'MODEL_DIR')


def prepare(config: TrainConfig) -> RunSetup:
  """Validates `config` and builds the run; writes nothing."""
  check_values(config)
  data.import_task_modules(config.mixture_or_task_module)
  prompt_length = config.network_config.prompt_length
  data.converter_lengths(config.task_feature_lengths, prompt_length)
  base = (
    opening.open_base(config.initial_checkpoint_path) if config.initial_checkpoint_path else None
  )
  network_config = base.reconcile(config.network_config) if base else config.network_config
  network_config.require_complete()
  vocabulary = data.vocabulary(config.mixture_or_task_name)
  vocabularies.check_fits(
    vocabulary,
    network_config.vocab_size,
    f'MIXTURE_OR_TASK_NAME={config.mixture_or_task_name!r}',
    config.initial_checkpoint_path,
  )
  if config.pack and prompt_length:
    _warn(
      f'PACK=True with a {prompt_length}-position prompt: the prompt cannot attend to a '
      'packed row\'s inputs, as it does unpacked and at evaluation, so it trains for a '
      'slightly different computation (google-research/prompt-tuning refuses packing). '
      'PACK=False is the prompt-tuning default.'
    )
  mesh = config.partition.make_mesh()
  checks.batch_on_mesh(config.batch_size, config.num_microbatches, mesh)
  train_ds, eval_ds = _datasets(config, prompt_length)

  model = models.EncoderDecoderModel(network_config, config.loss)
  lengths = data.converter_lengths(config.task_feature_lengths, prompt_length)
  init_fn = lambda rng: model.init(rng, lengths['inputs'], lengths['targets'])
  shapes = abstract_parameters(model, lengths, mesh, config.partition.logical_axis_rules)
  shardings = {k: s.sharding for k, s in shapes.items()}
  trainable_paths, frozen_paths = partitioning.split_trainable(
    list(shapes), trainable_patterns(config.trainable, network_config)
  )
  methods.check_run(network_config, shapes, trainable_paths, frozen_paths, base)
  resume_from = _resume_record(config, network_config, trainable_paths)

  frozen_targets = {
    k: jax.ShapeDtypeStruct(
      shapes[k].shape,
      quantization.storage_dtype(k, shapes[k].dtype, config.frozen_dtype),
      sharding=shardings[k],
    )
    for k in frozen_paths
  }
  if base:
    frozen = base.load(frozen_targets, progress=config.progress_bar and jax.process_index() == 0)
  else:
    if frozen_paths:
      logging.warning('No INITIAL_CHECKPOINT_PATH: the frozen parameters are random.')
    frozen = initialise(
      init_fn, _rngs(config.seed)['init'], frozen_paths, shardings, config.frozen_dtype
    )
  return RunSetup(
    config=config,
    network_config=network_config,
    optimizer=config.optimizer or optimizers.adafactor(),
    model=model,
    mesh=mesh,
    vocabulary=vocabulary,
    train_ds=train_ds,
    eval_ds=eval_ds,
    shapes=shapes,
    shardings=shardings,
    trainable_paths=tuple(trainable_paths),
    frozen_tree=partitioning.unflatten(frozen),
    init_fn=init_fn,
    resume_from=resume_from,
  )


def abstract_parameters(
  model: models.EncoderDecoderModel, lengths: Mapping[str, int], mesh, rules
) -> dict[str, jax.ShapeDtypeStruct]:
  """Every parameter's shape, dtype and sharding on `mesh`, by path; nothing allocated.
  `lengths`: the converter's (prompt excluded)."""
  init = lambda rng: model.init(rng, lengths['inputs'], lengths['targets'])
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = partitioning.param_shardings(boxed, mesh, rules)
  return {
    k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings[k])
    for k, s in partitioning.flatten(nn.unbox(boxed)).items()
  }


def trainable_patterns(
  trainable: Optional[Sequence[str]], config: network.T5Config
) -> Sequence[str]:
  """TRAINABLE when set; otherwise every parameter the tuning method adds."""
  if trainable:
    return trainable
  patterns = config.tuned_parameters()
  if not patterns:
    raise UserError(
      'Nothing to train: the network has no prompt or adapter (PROMPT_LENGTH '
      '= 0 and no method file such as gin/methods/lora.gin). Set '
      "PROMPT_LENGTH, include a method file, or set TRAINABLE (e.g. ['.*'] "
      'to train every parameter).'
    )
  return patterns


def _datasets(config: TrainConfig, prompt_length: int):
  """(train, eval or None): each split's whole stream (see data.get_dataset)."""
  common = dict(prompt_length=prompt_length, use_cached=config.use_cached_tasks)
  train_ds = data.get_dataset(
    config.mixture_or_task_name,
    config.task_feature_lengths,
    config.train_split,
    shuffle=True,
    seed=config.seed,
    repeat=True,
    pack=config.pack,
    **common,
  )
  eval_ds = None
  if config.eval_split:
    eval_ds = data.get_dataset(
      config.mixture_or_task_name,
      config.task_feature_lengths,
      config.eval_split,
      shuffle=False,
      repeat=False,
      pack=False,
      **common,
    )
  return train_ds, eval_ds


def _resume_record(
  config: TrainConfig, network_config: network.T5Config, trainable_paths: Sequence[str]
) -> Optional[run_checkpoints.RunMeta]:
  """The newest checkpoint's record when MODEL_DIR holds a run to resume, checked
  against this configuration."""
  model_dir = config.model_dir
  meta = next(_readable_records(model_dir), None)
  if meta is None:
    if run_checkpoints.all_steps(model_dir):
      raise _all_damaged(model_dir)
    return None
  if meta.imported_from is not None:
    raise UserError(
      f'{model_dir} holds an imported adapter (from python -m '
      't5pt.peft_import), which has no optimizer state to resume; train into '
      'a new MODEL_DIR.'
    )
  if sorted(meta.trainable) != sorted(trainable_paths):
    raise UserError(
      f'{model_dir} was trained with trainable parameters '
      f'{list(meta.trainable)} but TRAINABLE now selects '
      f'{list(trainable_paths)}; use a new MODEL_DIR or restore the old '
      'TRAINABLE.'
    )
  _check_unchanged(meta, config, network_config)
  return meta


def _readable_records(
  model_dir: str, below: Optional[int] = None
) -> Iterator[run_checkpoints.RunMeta]:
  """The records of the run's checkpoints (of steps before `below`), newest first,
  warning past those that do not read back."""
  for step in run_checkpoints.all_steps(model_dir):
    if below is not None and step >= below:
      continue
    try:
      yield run_checkpoints.read_meta(model_dir, step)
    except run_checkpoints.DamagedCheckpoint as e:
      _warn(f'{e}; trying the checkpoint before it.')


def _all_damaged(model_dir: str) -> UserError:
  return UserError(
    f'No checkpoint in {model_dir} reads back as it was saved (see the warnings above). '
    'Restore the directory from a copy, or train into a new MODEL_DIR.'
  )


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f't5pt: warning: {message}', file=sys.stderr)


def _check_unchanged(
  meta: run_checkpoints.RunMeta, config: TrainConfig, network_config: network.T5Config
) -> None:
  """Refuses to resume under settings that would silently change what the run trains on:
  another task, lengths, batch size (the data position counts batches), prompt, base or
  seed. TRAIN_STEPS, periods and the like may change. Fields an older run did not record
  are not checked."""
  recorded_prompt = meta.network_config.prompt_length if meta.network_config else None
  base = config.initial_checkpoint_path
  now = {
    'MIXTURE_OR_TASK_NAME': (meta.mixture_or_task_name, config.mixture_or_task_name),
    'TASK_FEATURE_LENGTHS': (
      meta.task_feature_lengths,
      dict(config.task_feature_lengths),
    ),
    'BATCH_SIZE': (meta.batch_size, config.batch_size),
    'PROMPT_LENGTH': (recorded_prompt, network_config.prompt_length),
    'INITIAL_CHECKPOINT_PATH': (meta.initial_checkpoint_path, fs.absolute(base) if base else None),
    'SEED': (meta.seed, config.seed),
  }
  changed = [
    f'{macro} was {recorded!r}, now {current!r}'
    for macro, (recorded, current) in now.items()
    if recorded is not None and recorded != current
  ]
  if changed:
    raise UserError(
      f'{config.model_dir} holds a run (step {meta.step}) trained with other settings: '
      + '; '.join(changed)
      + '. Resuming would mix data or models. Restore those settings to continue the run, '
      'or train into a new MODEL_DIR (INITIAL_CHECKPOINT_PATH stays the frozen base; '
      'PROMPT_INIT = @prompts.from_file starts from an exported prompt).'
    )


@dataclasses.dataclass(frozen=True)
class InitialState:
  """Where training starts: fresh at step 0, or restored from the newest good checkpoint."""

  params: dict  # trainable, nested, on the mesh
  opt_state: object
  step: int
  batches_consumed: int
  damaged_steps: tuple[int, ...] = ()  # newer checkpoints that did not read back


def initial_state(setup: RunSetup) -> InitialState:
  """Restores the newest checkpoint that reads back as saved (checksums included),
  falling back past damaged ones; or initialises step 0 (the prompt from PROMPT_INIT).
  Writes nothing."""
  tx = setup.optimizer.transform
  abstract_params = partitioning.unflatten(
    {
      k: jax.ShapeDtypeStruct(
        setup.shapes[k].shape, setup.shapes[k].dtype, sharding=setup.shardings[k]
      )
      for k in setup.trainable_paths
    }
  )
  abstract_opt = abstract_opt_state(tx, abstract_params, setup.mesh)
  if setup.resume_from is None:
    params = _initial_trainable(setup)
    shardings = jax.tree.map(lambda a: a.sharding, abstract_opt)
    return InitialState(params, jax.jit(tx.init, out_shardings=shardings)(params), 0, 0)
  model_dir = setup.config.model_dir
  candidates = itertools.chain(
    [setup.resume_from], _readable_records(model_dir, below=setup.resume_from.step)
  )
  for meta in candidates:
    try:
      params, opt_state = run_checkpoints.restore(model_dir, meta, abstract_params, abstract_opt)
    except run_checkpoints.DamagedCheckpoint as e:
      _warn(f'{e}; trying the checkpoint before it.')
      continue
    newer = tuple(s for s in run_checkpoints.all_steps(model_dir) if s > meta.step)
    return InitialState(params, opt_state, meta.step, meta.batches_consumed, newer)
  raise _all_damaged(model_dir)


def abstract_opt_state(tx, abstract_params, mesh):
  """The optimizer state's shapes, dtypes and shardings: each leaf where XLA places it
  given the parameters' shardings, and replicated over the whole mesh where XLA names
  no mesh (scalars such as the step count, which would otherwise live on one device)."""

  def on_mesh(shape, sharding):
    if not isinstance(sharding, jax.sharding.NamedSharding):
      sharding = partitioning.replicated(mesh)
    return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)

  compiled = jax.jit(tx.init).lower(abstract_params).compile()
  return jax.tree.map(on_mesh, jax.eval_shape(tx.init, abstract_params), compiled.output_shardings)


def _rngs(seed: int) -> dict[str, jax.Array]:
  init, prompt, dropout = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {'init': init, 'prompt': prompt, 'dropout': dropout}


def dropout_rng(setup: RunSetup) -> jax.Array:
  return _rngs(setup.config.seed)['dropout']


def _initial_trainable(setup: RunSetup) -> dict:
  """Fresh trainable parameters (nested): random, with the prompt from PROMPT_INIT."""
  rngs = _rngs(setup.config.seed)
  flat = initialise(setup.init_fn, rngs['init'], setup.trainable_paths, setup.shardings, 'float32')
  if network.PROMPT_PATH in flat:
    frozen = partitioning.flatten(setup.frozen_tree)
    embedding = frozen.get(network.EMBEDDING_PATH, flat.get(network.EMBEDDING_PATH))
    value = setup.config.prompt_init(
      rngs['prompt'],
      flat[network.PROMPT_PATH].shape,
      embedding=np.asarray(embedding, np.float32),
      vocabulary=setup.vocabulary,
    )
    flat[network.PROMPT_PATH] = jax.device_put(
      jnp.asarray(value, jnp.float32), setup.shardings[network.PROMPT_PATH]
    )
  return partitioning.unflatten(flat)


def initialise(init_fn, rng, paths: Sequence[str], shardings, dtype) -> dict:
  """Randomly initialises only `paths` (XLA prunes the rest of the init computation)."""
  if not paths:
    return {}

  def select(rng):
    flat = partitioning.flatten(nn.unbox(init_fn(rng)))
    return {k: flat[k].astype(dtype) for k in paths}

  return jax.jit(select, out_shardings={k: shardings[k] for k in paths})(rng)
