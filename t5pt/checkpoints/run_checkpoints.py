"""Run checkpoints (orbax): the trainable state of one training run, and its record.

A run's MODEL_DIR (local or gs://) holds `checkpoint_<step>/` directories written
atomically by orbax's CheckpointManager, each with up to three items:
  params     the *trainable* parameters only (a prompt is kilobytes to megabytes)
  opt_state  their optimizer state (absent in a run imported from an HF PEFT adapter)
  meta       a RunMeta as JSON: what the run is and where its data stands
The frozen base is read from INITIAL_CHECKPOINT_PATH (see opening) and never
written again.
"""

import contextlib
import dataclasses
import logging
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from t5pt.model import network
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

STEP_PREFIX = 'checkpoint'
RUN_META_VERSION = 2


@dataclasses.dataclass(frozen=True)
class RunMeta:
  """What each checkpoint of a run records besides its arrays.

  Version 0 is the untyped dict runs were written with before this record existed (no
  `version` key; older ones lack `network_config` or the task fields too); version 1 has
  no `batch_size`. Both read unchanged, missing fields taking the defaults below.
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
  batch_size: Optional[int] = None  # global; batches_consumed counts batches of this size
  checksums: Optional[Mapping[str, int]] = None  # {array path: checksum()}, set by save
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
    appears once complete. `opt_state` None saves none (an imported adapter). The record
    gets every array's checksum, verified when the checkpoint is restored."""
    meta = dataclasses.replace(meta, checksums=checksums(_items(params, opt_state)))
    items = {'params': ocp.args.StandardSave(params), 'meta': ocp.args.JsonSave(meta.to_json())}
    if opt_state is not None:
      items['opt_state'] = ocp.args.StandardSave(opt_state)
    self._manager.save(meta.step, args=ocp.args.Composite(**items), force=True)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

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


def all_steps(model_dir: str) -> list[int]:
  """Every complete checkpoint step in `model_dir`, newest first."""
  if not fs.isdir(model_dir):
    return []
  with _read_only_manager(model_dir) as manager:
    return sorted(manager.all_steps(), reverse=True)


class DamagedCheckpoint(UserError):
  """A complete checkpoint that does not read back as it was saved."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path} is damaged: {reason}')
    self.path = path


def read_meta(model_dir: str, step: int) -> RunMeta:
  """The record of checkpoint `step` of a run, without opening it for writing."""
  path = step_dir(model_dir, step)
  try:
    with _read_only_manager(model_dir) as manager:
      record = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax, tensorstore and JSON each raise their own types.
    raise DamagedCheckpoint(path, f'its run record cannot be read ({_reason(e)})') from e
  if not isinstance(record.get('meta'), Mapping):
    raise DamagedCheckpoint(path, 'its run record is missing or not a JSON object')
  return RunMeta.from_json(record['meta'], path)


def restore(model_dir: str, meta: RunMeta, abstract_params, abstract_opt_state):
  """(params, opt_state) of checkpoint `meta.step`, placed as the abstract targets ask,
  each array checked against the checksum recorded when it was saved."""
  path = step_dir(model_dir, meta.step)
  try:
    with _read_only_manager(model_dir) as manager:
      restored = manager.restore(
        meta.step,
        args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=ocp.args.StandardRestore(abstract_opt_state),
        ),
      )
  except Exception as e:  # A missing, truncated or garbled file: whatever orbax raises.
    raise DamagedCheckpoint(path, f'its arrays cannot be read ({_reason(e)})') from e
  params, opt_state = restored['params'], restored['opt_state']
  verify(meta, path, _items(params, opt_state))
  return params, opt_state


def verify(meta: RunMeta, path: str, items: Mapping[str, object]) -> None:
  """Raises DamagedCheckpoint unless every array of `items` ({'params': nested params,
  'opt_state': ...} as read back) has the checksum its record holds (runs saved before
  checksums were recorded are not checked)."""
  if meta.checksums is None:
    return
  found = checksums(dict(items))
  prefixes = tuple(f"['{name}']" for name in items)
  recorded = {k: v for k, v in meta.checksums.items() if k.startswith(prefixes)}
  wrong = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
  if wrong:
    raise DamagedCheckpoint(
      path, f'{len(wrong)} array(s) differ from what was saved (checksums), e.g. {wrong[:2]}'
    )


def set_aside(model_dir: str, step: int) -> str:
  """Renames a damaged checkpoint_<step> out of the run (kept for inspection), so that a
  resumed run can save that step again; returns the new path."""
  old = fs.path(step_dir(model_dir, step))
  new = old.parent / f'{old.name}.damaged'
  old.rename(new)
  return str(new)


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:300] if text else ""}'


def _items(params, opt_state) -> dict:
  return {'params': params} if opt_state is None else {'params': params, 'opt_state': opt_state}


def checksums(tree) -> dict[str, int]:
  """{leaf path: checksum of its bits}, computed where the arrays are (any sharding gives
  the same value): the sum of each 32-bit word times an odd weight, modulo 2**32, so any
  single flipped bit changes it."""
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  names = [jax.tree_util.keystr(p) for p, _ in paths_and_leaves]
  values = jax.device_get(_checksum_leaves([leaf for _, leaf in paths_and_leaves]))
  return {name: int(value) for name, value in zip(names, values)}


@jax.jit
def _checksum_leaves(leaves):
  def one(x):
    x = jnp.asarray(x)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)

  return [one(x) for x in leaves]
