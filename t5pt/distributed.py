"""Several hosts: jax.distributed from t5x's flags or from the cluster's environment.

Every host runs the same command. t5x's flags start JAX's distributed runtime:

  --multiprocess_gpu --coordinator_address=HOST0:1234 --process_count=N --process_index=I

With `--multiprocess_gpu` alone, JAX finds the three values itself on SLURM, Open MPI,
Kubernetes (GKE) and Cloud TPU; `JAX_COORDINATOR_ADDRESS` also turns it on. A Cloud TPU
pod slice needs no flag: its runtime already joins the hosts. Despite its t5x name the
flag works on any backend (CPU processes exchange data with gloo, the tests' setup).

After `initialize()`, JAX's SPMD does the rest: each host feeds its own shard of the data
(`jax.make_array_from_process_local_data`), orbax saves and restores collectively, and
only process 0 writes logs, configs and outputs.
"""

import os
import re

import jax
from absl import flags
from jax.experimental import multihost_utils

from t5pt.errors import UserError

_MULTIPROCESS = flags.DEFINE_boolean(
  'multiprocess_gpu',
  False,
  'Start JAX distributed (several hosts or processes), from --coordinator_address, '
  "--process_count and --process_index, or from the cluster's environment (t5x's flag).",
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0, reachable from every process.'
)
_COUNT = flags.DEFINE_integer('process_count', None, 'Number of processes (hosts).')
_INDEX = flags.DEFINE_integer('process_index', None, 'This process, 0 .. process_count-1.')

_HOST_PORT = re.compile(r'^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$')


def initialize() -> None:
  """Joins the other processes when asked to (see the module docstring); before anything
  else touches JAX's devices. Bad flag values are UserErrors."""
  from_env = os.environ.get('JAX_COORDINATOR_ADDRESS')
  given = {
    name: flag.value
    for name, flag in (('coordinator_address', _COORDINATOR), ('process_count', _COUNT))
    if flag.value is not None
  }
  if _INDEX.value is not None:
    given['process_index'] = _INDEX.value
  if not _MULTIPROCESS.value:
    if given:
      raise UserError(
        f'--{next(iter(given))} is set but --multiprocess_gpu is not; add --multiprocess_gpu '
        "to start the processes together (t5x's flags), or drop the other flags."
      )
    if not from_env:
      return
  address = _COORDINATOR.value or from_env
  if address is not None and not _HOST_PORT.match(address):
    flag = '--coordinator_address' if _COORDINATOR.value else 'JAX_COORDINATOR_ADDRESS'
    raise UserError(f'{flag}={address!r} is not HOST:PORT (e.g. 10.0.0.2:1234).')
  count, index = _COUNT.value, _INDEX.value
  if count is not None and count < 1:
    raise UserError(f'--process_count={count} must be at least 1.')
  if index is not None and (index < 0 or (count is not None and index >= count)):
    raise UserError(
      f'--process_index={index} must be in 0..{"process_count-1" if count is None else count - 1}.'
    )
  try:
    jax.distributed.initialize(address, count, index)
  except (RuntimeError, ValueError) as e:
    raise UserError(
      f'Could not start JAX distributed with coordinator {address!r}, process_count={count}, '
      f'process_index={index}: {str(e).strip().splitlines()[0][:300]}. Every process must run '
      'the same command with its own --process_index, and process 0 must be reachable at '
      '--coordinator_address.'
    ) from e


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op on one process): what process 0 wrote
  before it is there for all to read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_writer() -> bool:
  """Whether this process writes logs, configs and outputs (process 0 does)."""
  return jax.process_index() == 0


def fetch(tree):
  """`tree`'s arrays as numpy on every process, gathering the parts other hosts hold."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(
    lambda x: (
      multihost_utils.process_allgather(x, tiled=True)
      if isinstance(x, jax.Array) and not x.is_fully_addressable
      else jax.device_get(x)
    ),
    tree,
  )
