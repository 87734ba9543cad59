"""Device mesh, t5x-style logical axis rules, and the trainable/frozen split.

Every parameter carries logical axis names (see network.py); the rules below map them
onto a ('data', 'model') mesh exactly as t5x's `standard_logical_axis_rules` does for
1-D parameter partitioning. Parameter paths are '/'-joined, e.g.
'encoder/layers_0/attention/query/kernel'.
"""

import dataclasses
import re
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gin
from t5pt.runtime.errors import UserError

LogicalRules = Sequence[tuple[str, Optional[str]]]

STANDARD_LOGICAL_AXIS_RULES: LogicalRules = (
  ('batch', 'data'),
  ('vocab', 'model'),
  ('embed', None),
  ('mlp', 'model'),
  ('heads', 'model'),
  ('kv', None),
  ('joined_kv', 'model'),
  ('relpos_buckets', None),
  ('length', None),
)  # Axes not named here, such as those the tuning methods add, are replicated.


@gin.configurable(module='partitioning')
@dataclasses.dataclass(frozen=True)
class PartitionConfig:
  """num_partitions: size of the 'model' mesh axis (the rest of the devices is 'data')."""

  num_partitions: int = 1
  logical_axis_rules: LogicalRules = STANDARD_LOGICAL_AXIS_RULES

  def make_mesh(self, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    if devices.size % self.num_partitions:
      raise UserError(
        f'NUM_PARTITIONS={self.num_partitions} (partitioning.PartitionConfig.'
        'num_partitions) '
        f'does not divide the {devices.size} available devices.'
      )
    return Mesh(devices.reshape(-1, self.num_partitions), ('data', 'model'))


def flatten(tree) -> dict[str, object]:
  return traverse_util.flatten_dict(tree, sep='/')


def unflatten(flat: Mapping[str, object]):
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def param_shardings(boxed_params, mesh: Mesh, rules: LogicalRules) -> dict:
  """Flat {path: NamedSharding} from logically annotated (boxed) parameters."""
  specs = nn.get_partition_spec(boxed_params)
  return flatten(nn.logical_to_mesh_sharding(specs, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over 'data' along their leading (batch) axis."""
  return NamedSharding(mesh, PartitionSpec('data'))


def check_batch_size(batch_size: int, mesh: Mesh, macro: str = 'BATCH_SIZE') -> None:
  """The global batch must split evenly over the mesh's 'data' axis."""
  data_size = mesh.shape['data']
  if batch_size < 1 or batch_size % data_size:
    raise UserError(
      f'{macro}={batch_size} must be a positive multiple of the data-parallel mesh size '
      f'({data_size} = {mesh.devices.size} devices / NUM_PARTITIONS={mesh.shape["model"]}).'
    )


def place_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  """Global arrays [batch, ...] from the whole batch, which every process holds: each
  process hands JAX only the rows its own devices keep. With one process this is
  jax.device_put."""
  return {k: _place_rows(v, sharding) for k, v in batch.items()}


def _place_rows(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  index = sharding.addressable_devices_indices_map(value.shape).values()
  starts = [rows.start or 0 for rows, *_ in index]
  stops = [value.shape[0] if rows.stop is None else rows.stop for rows, *_ in index]
  local = value[min(starts) : max(stops)]
  return jax.make_array_from_process_local_data(sharding, local, value.shape)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def split_trainable(paths: Sequence[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
  """Partitions parameter paths by TRAINABLE regexes (full match), keeping order.

  Raises a UserError when no parameter matches, or a pattern matches nothing, since
  either almost certainly means a typo in the binding.
  """
  compiled = [re.compile(p) for p in patterns]
  trainable = [p for p in paths if any(c.fullmatch(p) for c in compiled)]
  for pattern, c in zip(patterns, compiled):
    if not any(c.fullmatch(p) for p in paths):
      raise UserError(
        f'TRAINABLE pattern {pattern!r} matches no parameter. Parameter paths '
        f'look like {paths[0]!r}; the prompt is "encoder/prompt/prompt" and '
        'exists only when PROMPT_LENGTH > 0.'
      )
  frozen = [p for p in paths if p not in set(trainable)]
  return trainable, frozen
