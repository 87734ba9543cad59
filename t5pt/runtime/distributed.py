"""Several hosts: jax.distributed from t5x's flags, the cluster's environment, or a TPU pod.

Every host runs the same command. JAX's distributed runtime starts when:

  * t5x's flags ask for it: `--multiprocess_gpu --coordinator_address=HOST0:1234
    --process_count=N --process_index=I` (with `--multiprocess_gpu` alone JAX reads the
    three values from SLURM, Open MPI or Kubernetes); `JAX_COORDINATOR_ADDRESS` in the
    environment does too. Despite its t5x name the flag works on any backend (CPU
    processes exchange data with gloo, the tests' setup);
  * or, with no flag, JAX's own cluster detection finds several processes here: a Cloud
    TPU pod slice (GCE or GKE), or a SLURM / Open MPI / Kubernetes job of several tasks.
    A TPU pod needs this too: without a distributed client there is no preemption sync
    point, so a preemption notice would stop every host with nothing saved.

After `initialize()`, JAX's SPMD does the rest: each host feeds its own shard of the data
(`jax.make_array_from_process_local_data`), orbax saves and restores collectively, and
only process 0 writes logs, configs and outputs.

The flags are defined by `define_flags()`, which only t5pt's entry points call: t5x's
own programs import t5pt's modules (through gin files) and define flags of these names.
"""

import json
import os
import re
import sys
from typing import Optional

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from t5pt.runtime import logs
from t5pt.runtime.errors import UserError

_HOST_PORT = re.compile(r'^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$')
_FLAGS = (
  (
    flags.DEFINE_boolean,
    'multiprocess_gpu',
    False,
    'Start JAX distributed (several hosts or processes), from --coordinator_address, '
    "--process_count and --process_index, or from the cluster's environment (t5x's flag).",
  ),
  (flags.DEFINE_string, 'coordinator_address', None, 'host:port of process 0.'),
  (flags.DEFINE_integer, 'process_count', None, 'Number of processes (hosts).'),
  (flags.DEFINE_integer, 'process_index', None, 'This process, 0 .. process_count-1.'),
)


def define_flags() -> None:
  """Defines t5x's multi-host flags for a t5pt entry point (once)."""
  for define, name, default, help_text in _FLAGS:
    if name not in flags.FLAGS:
      define(name, default, help_text)


def _flag(name: str):
  return flags.FLAGS[name].value if name in flags.FLAGS else None


def detected_cluster() -> Optional[tuple[str, int]]:
  """(name, process count) of the multi-process job JAX's cluster detection finds here
  (a Cloud TPU slice, SLURM, Open MPI, Kubernetes), or None. Reads what
  `jax.distributed.initialize()` with no arguments reads."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel

  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if env.opt_in_only_method:
      continue
    try:
      if env.is_env_present():
        return env.name, int(env.get_process_count())
    except Exception:  # pylint: disable=broad-except
      continue  # A detector that cannot tell (e.g. no metadata server) found nothing.
  return None


def initialize() -> None:
  """Joins the other processes when asked to or when the cluster has several (see the
  module docstring); before anything else touches JAX's devices. Bad flag values are
  UserErrors."""
  from_env = os.environ.get('JAX_COORDINATOR_ADDRESS')
  given = {
    name: _flag(name)
    for name in ('coordinator_address', 'process_count', 'process_index')
    if _flag(name) is not None
  }
  if not _flag('multiprocess_gpu'):
    if given:
      raise UserError(
        f'--{next(iter(given))} is set but --multiprocess_gpu is not; add --multiprocess_gpu '
        "to start the processes together (t5x's flags), or drop the other flags."
      )
    if not from_env:
      cluster = detected_cluster()
      if cluster is None or cluster[1] < 2:
        return
  address = _flag('coordinator_address') or from_env
  if address is not None and not _HOST_PORT.match(address):
    flag = '--coordinator_address' if _flag('coordinator_address') else 'JAX_COORDINATOR_ADDRESS'
    raise UserError(f'{flag}={address!r} is not HOST:PORT (e.g. 10.0.0.2:1234).')
  count, index = _flag('process_count'), _flag('process_index')
  if count is not None and count < 1:
    raise UserError(f'--process_count={count} must be at least 1.')
  if index is not None and (index < 0 or (count is not None and index >= count)):
    raise UserError(
      f'--process_index={index} must be in 0..{"process_count-1" if count is None else count - 1}.'
    )
  logs.drop_gloo_lines()  # gloo's C++ "[Gloo] Rank 0 is connected to 1 peer ranks"
  try:
    jax.distributed.initialize(address, count, index)
  except (RuntimeError, ValueError) as e:
    raise UserError(
      f'Could not start JAX distributed with coordinator {address!r}, process_count={count}, '
      f'process_index={index}: {str(e).strip().splitlines()[0][:300]}. Every process must run '
      'the same command with its own --process_index, and process 0 must be reachable at '
      '--coordinator_address.'
    ) from e


def warn_if_unprotected() -> None:
  """One warning line when this run has several processes but no distributed client:
  SIGTERM then reaches no preemption sync point and every host stops unsaved."""
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel

  if jax.process_count() > 1 and jax_distributed.global_state.client is None:
    print(
      f't5pt: warning: {jax.process_count()} processes but no JAX distributed client: a '
      'preemption (SIGTERM) cannot be saved. Pass --multiprocess_gpu (with '
      '--coordinator_address, --process_count, --process_index where the cluster does not '
      'provide them).',
      file=sys.stderr,
    )


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op on one process): what process 0 wrote
  before it is there for all to read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_writer() -> bool:
  """Whether this process writes logs, configs and outputs (process 0 does)."""
  return jax.process_index() == 0


def from_first_process(value):
  """`value` (JSON-able) as process 0 has it, on every process: what one process computed
  outside JAX (a tool's result) made the same everywhere."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_writer() else None
  size = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
  buffer = np.zeros((size,), np.uint8) if data is None else data
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())


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
