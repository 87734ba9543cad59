"""Run checkpoints (orbax): the trainable state of one training run, and its record.

A run's MODEL_DIR (local or gs://) holds `checkpoint_<step>/` directories written
atomically by orbax's CheckpointManager, each with up to three items:
  params     the *trainable* parameters only (a prompt is kilobytes to megabytes)
  opt_state  their optimizer state (absent in a run imported from an HF PEFT adapter)
  meta       a RunMeta as JSON: what the run is and where its data stands
The frozen base is read from INITIAL_CHECKPOINT_PATH (see checkpoint_import) and never
written again.
"""

import contextlib
import dataclasses
import logging
from typing import Mapping, Optional, Sequence, Union

import orbax.checkpoint as ocp

from t5pt import fs
from t5pt import network
from t5pt.errors import UserError

STEP_PREFIX = 'checkpoint'
RUN_META_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RunMeta:
  """What each checkpoint of a run records besides its arrays.

  Version 0 is the untyped dict runs were written with before this record existed (no
  `version` key; older ones lack `network_config` or the task fields too): it reads
  unchanged, missing fields taking the defaults below.
  """

  step: int
  trainable: tuple[str, ...]
  batches_consumed: int = 0  # batches the data iterator has yielded
  seed: int = 0
  network_config: Optional[network.T5Config] = None  # None: older runs; the base knows
  initial_checkpoint_path: Optional[str] = None  # the frozen base (absolute or URI)
  mixture_or_task_name: Optional[str] = None
  mixture_or_task_module: Union[str, Sequence[str], None] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  imported_from: Optional[str] = None  # the HF PEFT adapter of an imported run
  version: int = RUN_META_VERSION

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)  # Also turns network_config into a dict.
    out['trainable'] = list(self.trainable)
    return out

  @classmethod
  def from_json(cls, record: Mapping, source: str) -> 'RunMeta':
    """Reads a meta item of any version up to RUN_META_VERSION."""
    record = dict(record)
    version = record.setdefault('version', 0)
    if version > RUN_META_VERSION:
      raise UserError(
        f'{source} was written by a newer t5pt (run record version '
        f'{version}; this one reads up to {RUN_META_VERSION}); upgrade t5pt.'
      )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - known)
    if unknown:
      raise UserError(
        f'{source}: unknown run record field(s) {unknown}; the checkpoint '
        'is damaged or from another program.'
      )
    config = record.get('network_config')
    if config is not None:
      record['network_config'] = network.T5Config(**config)
    record['trainable'] = tuple(record.get('trainable', ()))
    record['version'] = RUN_META_VERSION
    return cls(**record)


class RunCheckpointer:
  """Saves and restores the trainable state of one run, keeping the newest `keep`."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3):
    self._manager = ocp.CheckpointManager(
      fs.path(model_dir),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_prefix=STEP_PREFIX, create=True, cleanup_tmp_directories=True
      ),
    )

  def save(self, params, opt_state, meta: RunMeta) -> None:
    """Starts an asynchronous save of checkpoint `meta.step`; its directory only
    appears once complete. `opt_state` None saves none (an imported adapter)."""
    items = {'params': ocp.args.StandardSave(params), 'meta': ocp.args.JsonSave(meta.to_json())}
    if opt_state is not None:
      items['opt_state'] = ocp.args.StandardSave(opt_state)
    self._manager.save(meta.step, args=ocp.args.Composite(**items), force=True)

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
      fs.path(model_dir),
      options=ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, read_only=True),
    )
    try:
      yield manager
    finally:
      manager.close()


def step_dir(model_dir: str, step: int) -> str:
  return fs.join(model_dir, f'{STEP_PREFIX}_{step}')


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step in `model_dir` (read-only; None if there is none)."""
  if not fs.isdir(model_dir):
    return None
  with _read_only_manager(model_dir) as manager:
    return manager.latest_step()


def read_meta(model_dir: str, step: int) -> RunMeta:
  """The record of checkpoint `step` of a run, without opening it for writing."""
  with _read_only_manager(model_dir) as manager:
    record = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  return RunMeta.from_json(record, step_dir(model_dir, step))


def restore(model_dir: str, step: int, abstract_params, abstract_opt_state):
  """(params, opt_state) of checkpoint `step`, placed as the abstract targets ask."""
  with _read_only_manager(model_dir) as manager:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
      ),
    )
  return restored['params'], restored['opt_state']
