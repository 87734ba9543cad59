"""Run checkpoints (orbax) and loading a frozen base model.

A run's MODEL_DIR holds `checkpoint_<step>/` directories written atomically by orbax's
CheckpointManager, each with three items:
  params     the *trainable* parameters only (a prompt is kilobytes to megabytes)
  opt_state  their optimizer state
  meta       JSON: step, batches consumed from the data iterator, trainable paths
The frozen base is read from INITIAL_CHECKPOINT_PATH and never written again.
"""

import os
from typing import Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5pt import partitioning
from t5pt.errors import UserError

STEP_PREFIX = 'checkpoint'


class RunCheckpointer:
  """Saves and restores the trainable state of one run, keeping the newest `keep`."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(model_dir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, step_prefix=STEP_PREFIX, create=True,
            cleanup_tmp_directories=True))

  def save(self, step: int, params, opt_state, meta: Mapping) -> None:
    """Starts an asynchronous save; a directory only appears once complete."""
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(dict(meta))), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def restore(self, step: int, abstract_params, abstract_opt_state):
    """Returns (params, opt_state) placed as the abstract targets ask."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state)))
    return restored['params'], restored['opt_state']

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step in `model_dir` (read-only; None if there is none)."""
  if not os.path.isdir(model_dir):
    return None
  manager = ocp.CheckpointManager(
      os.path.abspath(model_dir),
      options=ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, read_only=True))
  try:
    return manager.latest_step()
  finally:
    manager.close()


def resolve_params_dir(path: str) -> epath.Path:
  """Accepts a MODEL_DIR (its latest checkpoint), a checkpoint_<step> dir or its params dir."""
  p = epath.Path(path)
  if not p.exists():
    raise UserError(f'INITIAL_CHECKPOINT_PATH={path!r} does not exist. Point it at a t5pt '
                    'MODEL_DIR or one of its checkpoint_<step> directories.')
  if (p / '_METADATA').exists() or (p / '_sharding').exists():
    return p
  if (p / 'params').exists():
    return p / 'params'
  steps = sorted((int(c.name.split('_')[-1]), c) for c in p.glob(f'{STEP_PREFIX}_*')
                 if c.name.split('_')[-1].isdigit() and (c / 'params').exists())
  if steps:
    return steps[-1][1] / 'params'
  raise UserError(f'INITIAL_CHECKPOINT_PATH={path!r} holds no t5pt checkpoint (no '
                  f'{STEP_PREFIX}_<step>/params inside).')


def _open_params(path: str):
  """(params dir, checkpointer, nested metadata tree) of a t5pt checkpoint path."""
  params_dir = resolve_params_dir(path)
  checkpointer = ocp.PyTreeCheckpointer()
  return params_dir, checkpointer, checkpointer.metadata(params_dir).item_metadata.tree


def load_frozen_params(path: str, targets: Mapping[str, jax.ShapeDtypeStruct]
                       ) -> dict[str, jax.Array]:
  """Reads the listed parameters from a t5pt checkpoint, each cast and sharded as its
  target (ShapeDtypeStruct with dtype and sharding) says. Returns a flat {path: array}.

  Shapes are checked against the checkpoint's metadata before any tensor is read.
  """
  params_dir, checkpointer, stored_tree = _open_params(path)
  stored = partitioning.flatten(stored_tree)
  missing = [k for k in targets if k not in stored]
  if missing:
    raise UserError(f'INITIAL_CHECKPOINT_PATH={path!r} lacks {len(missing)} parameter(s) '
                    f'the model needs, e.g. {missing[:3]}. Is it a checkpoint of the same '
                    'architecture (network.T5Config)?')
  for name, target in targets.items():
    if tuple(stored[name].shape) != tuple(target.shape):
      raise UserError(f'Parameter {name!r} has shape {tuple(stored[name].shape)} in '
                      f'{params_dir} but the model expects {tuple(target.shape)}. The gin '
                      'network.T5Config sizes must match the checkpoint.')
  item = partitioning.unflatten(targets)
  restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))
  return partitioning.flatten(restored)


def read_params_as_numpy(path: str) -> dict[str, np.ndarray]:
  """Every parameter of a t5pt checkpoint as host numpy arrays (any saving topology)."""
  params_dir, checkpointer, stored = _open_params(path)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
  return partitioning.flatten(checkpointer.restore(
      params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args)))
