"""A trained run, or a bare base checkpoint, as a model ready to decode or evaluate.

A t5pt run stores only what it trained, plus (in each checkpoint's meta) the network
config, the base checkpoint it was trained on and its task (TrainedRun). A checkpoint of
real t5x trained with gin/t5x holds both in one tree (T5XRun). A run's trained parameters
are put back onto its base (merged_onto_base) or, trained from scratch, need none
(self_contained). Which of these a path is, and opening it, is opening.py's.
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

from t5pt.checkpoints import base_readers
from t5pt.checkpoints import run_checkpoints
from t5pt.model import methods
from t5pt.model import network
from t5pt.runtime import data
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError


class TrainedRun:
  """The trainable parameters (host numpy) and record of one checkpoint of a t5pt run."""

  def __init__(self, model_dir: str, step: int):
    """`step`: a checkpoint of the run in `model_dir` (opening.open_run picks it)."""
    step_dir = run_checkpoints.step_dir(model_dir, step)
    if not fs.isdir(step_dir):
      newest = run_checkpoints.latest_step(model_dir)
      raise UserError(f'{model_dir} has no checkpoint for step {step} (newest: {newest}).')
    self.step = step
    self.model_dir = model_dir
    self.meta = run_checkpoints.read_meta(model_dir, self.step)
    params_dir = fs.join(step_dir, 'params')
    if not fs.exists(fs.join(params_dir, '_METADATA')):
      raise run_checkpoints.DamagedCheckpoint(step_dir, 'its params are missing')
    try:
      self.params = base_readers.OrbaxCheckpoint(step_dir, fs.path(params_dir)).read_all()
    except UserError:
      raise
    except Exception as e:  # A missing or truncated array file: whatever orbax raises.
      raise run_checkpoints.DamagedCheckpoint(step_dir, f'its arrays cannot be read ({e!r})') from e
    run_checkpoints.verify(self.meta, step_dir, {'params': partitioning.unflatten(self.params)})

  @property
  def prompt(self) -> Optional[np.ndarray]:
    return self.params.get(network.PROMPT_PATH)

  def network_config(self) -> network.T5Config:
    # Older runs do not record it: the base checkpoint supplies the sizes.
    return self.meta.network_config or network.T5Config()

  def base_path(self, override: Optional[str] = None) -> str:
    path = override or self.meta.initial_checkpoint_path
    if not path:
      raise UserError(
        f'{self.model_dir} does not record its base checkpoint; pass the '
        'INITIAL_CHECKPOINT_PATH it was trained from.'
      )
    return path


class T5XRun(TrainedRun):
  """A checkpoint of real t5x trained with gin/t5x: one tree holds the frozen base and
  the tuned leaves. The tuned leaves are the run's parameters; the checkpoint itself is
  its base. Prompt and deep-prompt lengths are read from the shapes; LoRA and IA3 need
  the gin rules they were trained with (LoRA's alpha is not in the checkpoint)."""

  def __init__(
    self,
    checkpoint: base_readers.BaseCheckpoint,
    path: str,
    model_dir: str,
    step: int,
    setting: str = 'CHECKPOINT_PATH',
  ):
    """`checkpoint`: `path` (as the user named it under `setting`) opened, at `step` of the
    t5x model_dir `model_dir` (opening.open_run does both)."""
    shapes = checkpoint.shapes()
    tuned = sorted(k for k in shapes if network.is_added_by_tuning(k))
    if not tuned:
      raise UserError(f'{setting}={path!r} holds no prompt or adapter parameters.')
    self.model_dir = model_dir
    self.step = step
    self.params = {k: checkpoint.read(k) for k in tuned}
    config = checkpoint.reconcile(methods.recognise(network.T5Config(), shapes, setting, path))
    self.meta = run_checkpoints.RunMeta(
      step=self.step,
      trainable=config.tuned_parameters(),
      network_config=config,
      initial_checkpoint_path=path,
    )
    mesh = partitioning.PartitionConfig().make_mesh()
    missing = set(tuned) - set(base_readers.model_targets(config, 'float32', mesh))
    if missing:
      raise UserError(
        f'{setting}={path!r} holds tuned parameters the gin network.T5Config does not make, '
        f'e.g. {sorted(missing)[:2]}: bind the lora_rules / ia3_pattern the t5x run used.'
      )


@dataclasses.dataclass
class LoadedModel:
  config: network.T5Config
  params: dict  # nested, on the mesh
  run: Optional[TrainedRun]
  base_path: str


def merged_onto_base(
  run: TrainedRun, config: network.T5Config, base_params: dict, base_path: str, mesh
) -> LoadedModel:
  """`run`'s trained parameters (float32) put onto the base model `config`, `base_params`
  (nested, on `mesh`) read from `base_path`."""
  flat = partitioning.flatten(base_params)
  replicated = partitioning.replicated(mesh)
  for name, value in run.params.items():
    sharding = flat[name].sharding if name in flat else replicated
    flat[name] = jax.device_put(np.asarray(value, np.float32), sharding)
  return LoadedModel(config, partitioning.unflatten(flat), run, base_path)


def self_contained(run: TrainedRun, mesh) -> LoadedModel:
  """A run trained from scratch (TRAINABLE = everything) needs no base."""
  config = run.network_config().require_complete()
  targets = base_readers.model_targets(config, 'float32', mesh)
  missing = sorted(set(targets) - set(run.params))
  if missing:
    raise UserError(
      f'{run.model_dir} does not record its base checkpoint and lacks '
      f'{len(missing)} parameter(s), e.g. {missing[:2]}; pass the '
      'INITIAL_CHECKPOINT_PATH it was trained from (BASE_CHECKPOINT_PATH).'
    )
  params = {k: base_readers.place(run.params[k], t) for k, t in targets.items()}
  return LoadedModel(config, partitioning.unflatten(params), run, run.model_dir)


def task_and_lengths(
  loaded: LoadedModel,
  mixture_or_task_name: Optional[str],
  mixture_or_task_module,
  task_feature_lengths,
) -> tuple[Optional[str], Optional[dict]]:
  """The task and feature lengths to use: as given, else as the run recorded them.
  Imports the task's module (given or recorded) so that the task is registered."""
  meta = loaded.run.meta if loaded.run else run_checkpoints.RunMeta(step=0, trainable=())
  data.import_task_modules(mixture_or_task_module or meta.mixture_or_task_module)
  return (
    mixture_or_task_name or meta.mixture_or_task_name,
    task_feature_lengths or meta.task_feature_lengths,
  )
