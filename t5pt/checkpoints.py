"""Run checkpoints (orbax): the trainable state of one training run.

A run's MODEL_DIR holds `checkpoint_<step>/` directories written atomically by orbax's
CheckpointManager, each with three items:
  params     the *trainable* parameters only (a prompt is kilobytes to megabytes)
  opt_state  their optimizer state
  meta       JSON: step, batches consumed from the data iterator, trainable paths
The frozen base is read from INITIAL_CHECKPOINT_PATH (see checkpoint_import) and never
written again.
"""

import contextlib
import logging
import os
from typing import Mapping, Optional

import orbax.checkpoint as ocp

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


class _DropOrbaxReadWarnings(logging.Filter):
  """Orbax warns on every read-only open ("read_only=True, setting create=False", "Given
  directory is read only", "Metadata file does not exist" for item directories)."""

  def filter(self, record):
    return not (record.levelno == logging.WARNING and 'orbax' in record.pathname)


@contextlib.contextmanager
def quiet_orbax_reads():
  """Silences orbax's routine warnings while reading checkpoints."""
  quiet = _DropOrbaxReadWarnings()
  logging.getLogger('absl').addFilter(quiet)
  try:
    yield
  finally:
    logging.getLogger('absl').removeFilter(quiet)


@contextlib.contextmanager
def _read_only_manager(model_dir: str):
  with quiet_orbax_reads():
    manager = ocp.CheckpointManager(
        os.path.abspath(model_dir),
        options=ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, read_only=True))
    try:
      yield manager
    finally:
      manager.close()


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step in `model_dir` (read-only; None if there is none)."""
  if not os.path.isdir(model_dir):
    return None
  with _read_only_manager(model_dir) as manager:
    return manager.latest_step()


def read_meta(model_dir: str, step: int) -> dict:
  """The meta item of checkpoint `step` of a run, without opening it for writing."""
  with _read_only_manager(model_dir) as manager:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
