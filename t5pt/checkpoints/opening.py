"""What the user pointed at, recognised and opened: the one place that looks at a path.

    a path (INITIAL_CHECKPOINT_PATH, CHECKPOINT_PATH, ...) is   opened as
    a folder with config.json (+ model.safetensors,            base_readers.HFCheckpoint
      sharded safetensors + index, or pytorch_model.bin)         (transformers layout)
    a T5X dir/file with a msgpack `checkpoint`                 base_readers.T5XLegacyCheckpoint
    an orbax dir (_METADATA): a t5pt checkpoint_<step>          base_readers.OrbaxCheckpoint
      (params/_METADATA), a T5X one (state/_METADATA,            (the params tree; target/ or
      written by t5x's orbax CheckpointManager) or the           optimizer/target/ for T5X)
      item directory itself
    a dir holding checkpoint_<step>/ subdirectories            the newest complete step of the
      (a t5pt MODEL_DIR or a T5X model_dir)                      above (unfinished orbax saves
                                                                 are skipped)

As a run (open_run, load), the same paths are:

    a t5pt MODEL_DIR or its checkpoint_<step> (the newest      trained_model.TrainedRun: its
      step has a meta/ record)                                   trained parameters and record
    any other checkpoint above holding prompt or adapter       trained_model.T5XRun: the tuned
      leaves (a t5x run trained with gin/t5x, or one step)       leaves; the tree is its base
    a checkpoint without them (load only)                      the base alone, with no prompt

A run dir is read at the step asked for, else the one the path names, else the newest.
"""

import os
import posixpath
import re
from typing import Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from t5pt.checkpoints import base_readers
from t5pt.checkpoints import run_checkpoints
from t5pt.checkpoints import t5x_legacy
from t5pt.checkpoints import trained_model
from t5pt.model import network
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError

STEP_DIR = re.compile(r'^checkpoint_(\d+)$')

# The item directory holding the parameter tree in a checkpoint_<step>: t5pt's `params`,
# T5X's `state` (its train state dict: target/ is the model, state/ the optimizer's).
_ORBAX_ITEMS = ('params', 'state')


def step_of(checkpoint_path: str) -> int:
  """The step of a checkpoint_<step> directory or of an item in it (0 if neither)."""
  for name in reversed(checkpoint_path.rstrip('/').split('/')[-2:]):
    match = STEP_DIR.match(name)
    if match:
      return int(match.group(1))
  return 0


def _split_step_dir(path: str) -> tuple[str, Optional[int]]:
  """MODEL_DIR/checkpoint_<step> -> (MODEL_DIR, step); MODEL_DIR -> (MODEL_DIR, None)."""
  trimmed = path.rstrip('/')
  match = STEP_DIR.match(posixpath.basename(trimmed))
  if match:
    return posixpath.dirname(trimmed), int(match.group(1))
  return path, None


def _is_complete_step(step: epath.Path) -> bool:
  """Whether checkpoint_<step> is a finished save: orbax's own test (locally, no
  `.orbax-checkpoint-tmp` name; on an object store, its commit marker), or a legacy T5X
  msgpack `checkpoint` file, which orbax never marks."""
  return (step / t5x_legacy.CHECKPOINT_FILE).exists() or ocp.step.is_path_finalized(step)


def _newest_step_dir(path: epath.Path, setting: str) -> Optional[epath.Path]:
  """The newest complete checkpoint_<step> in `path`; None if it holds no step at all."""
  steps = sorted(
    ((int(m.group(1)), c) for c in path.iterdir() for m in [STEP_DIR.match(c.name)] if m),
    reverse=True,
  )
  if not steps:
    return None
  for _, step in steps:
    if _is_complete_step(step):
      return step
  raise UserError(
    f'{setting}={os.fspath(path)!r} holds checkpoint_<step> directories but none is a '
    f'finished save: orbax has not marked {[s.name for _, s in steps][:3]} committed. Wait '
    f'for the run to finish saving, or point {setting} at a finished checkpoint.'
  )


def open_base(path: str, setting: str = 'INITIAL_CHECKPOINT_PATH') -> base_readers.BaseCheckpoint:
  """The checkpoint at `path` in whichever format it is (see the module docstring), opened
  lazily. `setting` is the name the user gave `path` under, for error messages."""
  fs.check_gcs_reachable(path, setting)
  p = fs.path(path)
  if not p.exists():
    raise UserError(
      f'{setting}={path!r} does not exist. Point it at an HF folder (config.json + '
      'model.safetensors), a T5X model_dir or one of its checkpoint_<step> directories, '
      'or a t5pt MODEL_DIR.'
    )
  if p.is_dir() and (p / 'config.json').exists():
    return base_readers.HFCheckpoint(path)
  if (p.name == t5x_legacy.CHECKPOINT_FILE and not p.is_dir()) or (
    p.is_dir()
    and (p / t5x_legacy.CHECKPOINT_FILE).exists()
    and not (p / t5x_legacy.CHECKPOINT_FILE).is_dir()
  ):
    return base_readers.T5XLegacyCheckpoint(path)
  if p.is_dir():
    for candidate in [p / item for item in _ORBAX_ITEMS] + [p]:
      if (candidate / '_METADATA').exists():
        return base_readers.OrbaxCheckpoint(path, candidate)
    newest = _newest_step_dir(p, setting)
    if newest is not None:
      return open_base(os.fspath(newest), setting)
  raise UserError(
    f'{setting}={path!r} is not a checkpoint t5pt recognises: expected an HF folder with '
    'config.json; a T5X checkpoint_<step> (a msgpack `checkpoint` file, or orbax '
    'state/_METADATA as t5x\'s orbax CheckpointManager writes) or its model_dir; a t5pt '
    'MODEL_DIR or its checkpoint_<step> (params/_METADATA); or an orbax item directory '
    '(_METADATA). A directory of checkpoint_<step> subdirectories is read at its newest '
    'complete step.'
  )


def load_model(
  path: str,
  config: network.T5Config = network.T5Config(),
  dtype: str = 'float32',
  mesh: Optional[jax.sharding.Mesh] = None,
  rules: partitioning.LogicalRules = partitioning.STANDARD_LOGICAL_AXIS_RULES,
  setting: str = 'INITIAL_CHECKPOINT_PATH',
) -> tuple[network.T5Config, dict]:
  """(completed config, nested params) of the model the checkpoint at `path` holds: see
  BaseCheckpoint.load_model. `setting` names `path` in error messages (e.g. infer's
  CHECKPOINT_PATH)."""
  return open_base(path, setting).load_model(config, dtype, mesh, rules)


def is_run(path: str) -> bool:
  """Whether `path` is a t5pt MODEL_DIR or one of its checkpoint_<step> directories."""
  model_dir, _ = _split_step_dir(path)
  step = run_checkpoints.latest_step(model_dir)
  return step is not None and fs.isdir(fs.join(run_checkpoints.step_dir(model_dir, step), 'meta'))


def has_tuned_parameters(path: str, setting: str = 'CHECKPOINT_PATH') -> bool:
  """Whether a checkpoint that is not a t5pt run holds prompt or adapter parameters."""
  shapes = open_base(path, setting).shapes()
  return any(network.is_added_by_tuning(k) for k in shapes)


def _t5pt_run(path: str, step: Optional[int]) -> trained_model.TrainedRun:
  """The t5pt run at `path` (is_run), at `step`, else the step `path` names, else its
  newest."""
  model_dir, named_step = _split_step_dir(path)
  return trained_model.TrainedRun(
    model_dir, step or named_step or run_checkpoints.latest_step(model_dir)
  )


def _t5x_run(path: str, step: Optional[int], setting: str) -> trained_model.T5XRun:
  """The t5x checkpoint at `path` (its `step`, when `path` is a model_dir) as a run."""
  model_dir, named_step = _split_step_dir(path)
  if step and not named_step:
    path = run_checkpoints.step_dir(model_dir, step)
  checkpoint = open_base(path, setting)
  return trained_model.T5XRun(checkpoint, path, model_dir, step_of(checkpoint.path), setting)


def open_run(
  path: str, step: Optional[int] = None, setting: str = 'CHECKPOINT_PATH'
) -> trained_model.TrainedRun:
  """A t5pt run (TrainedRun), or a t5x checkpoint holding tuned leaves (T5XRun)."""
  return _t5pt_run(path, step) if is_run(path) else _t5x_run(path, step, setting)


def load(
  path: str,
  base_path: Optional[str] = None,
  dtype: str = 'float32',
  mesh: Optional[jax.sharding.Mesh] = None,
  step: Optional[int] = None,
) -> trained_model.LoadedModel:
  """The model at `path`: a run (at `step`, default the one `path` names or the newest)
  merged onto its base (`base_path`, default the one it records), or a bare base
  checkpoint.

  The base is read as `dtype` (e.g. 'bfloat16'); trained parameters stay float32.
  """
  mesh = mesh or partitioning.PartitionConfig().make_mesh()
  if is_run(path):
    run = _t5pt_run(path, step)
  elif has_tuned_parameters(path):
    run = _t5x_run(path, step, 'CHECKPOINT_PATH')
  else:
    config, params = load_model(path, dtype=dtype, mesh=mesh, setting='CHECKPOINT_PATH')
    return trained_model.LoadedModel(config, params, None, path)
  if not (base_path or run.meta.initial_checkpoint_path):
    return trained_model.self_contained(run, mesh)
  base = run.base_path(base_path)
  setting = 'BASE_CHECKPOINT_PATH'
  if not base_path:
    setting += ' (default: the INITIAL_CHECKPOINT_PATH the run recorded)'
  config, params = load_model(base, run.network_config(), dtype, mesh, setting=setting)
  return trained_model.merged_onto_base(run, config, params, base, mesh)
