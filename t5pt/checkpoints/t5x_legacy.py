"""Reader for legacy (pre-orbax) T5X checkpoints: a msgpack `checkpoint` file + zarr arrays.

Layout written by t5x.checkpoints:

    checkpoint_<step>/checkpoint        msgpack {version, optimizer: {target, state}}
    checkpoint_<step>/target.encoder.layers_0.attention.query.kernel/   zarr array

In the msgpack tree a parameter is either an inline array (flax ext type 1: shape, dtype
name, bytes; bfloat16 included) or a tensorstore spec whose `kvstore.path` is relative to
the checkpoint directory (drivers `file`, `gfile` or `gcs`). Relative paths are resolved
against where the checkpoint is *now*, so a checkpoint copied from GCS to local disk (or
back) reads without rewriting it. Arrays are read one at a time.
"""

import os
from typing import Any, Mapping

import numpy as np
import tensorstore as ts
from flax import serialization

from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

CHECKPOINT_FILE = 'checkpoint'


def is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, dict) and 'driver' in value and ('kvstore' in value or 'path' in value)


def _flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict) and not is_tensorstore_spec(value):
      flat.update(_flatten(value, path + '/'))
    else:
      flat[path] = value
  return flat


def kvstore_for(checkpoint_dir: str, spec: Mapping) -> dict:
  """The absolute tensorstore kvstore of a (relative) t5x array spec."""
  kvstore = spec.get('kvstore')
  path = kvstore['path'] if isinstance(kvstore, dict) else spec['path']
  if not (path.startswith('/') or '://' in path):
    path = fs.join(checkpoint_dir, path)
  if path.startswith('gs://'):
    bucket, _, key = path[len('gs://') :].partition('/')
    return {'driver': 'gcs', 'bucket': bucket, 'path': key}
  return {'driver': 'file', 'path': path}


class LegacyCheckpoint:
  """The parameters (`optimizer/target`) of a legacy T5X checkpoint, read lazily."""

  def __init__(self, path: str):
    checkpoint_file = fs.join(path, CHECKPOINT_FILE) if fs.isdir(path) else path
    # Absolute and normalised: tensorstore refuses local paths with ".." in them.
    self.directory = fs.absolute(os.path.dirname(checkpoint_file))
    try:
      tree = serialization.msgpack_restore(fs.read_bytes(checkpoint_file))
    except Exception as e:  # msgpack raises several unrelated types on corrupt input.
      raise UserError(
        f'{checkpoint_file} is not a readable T5X msgpack checkpoint ({type(e).__name__}: {e}).'
      ) from e
    target = tree.get('optimizer', {}).get('target') if isinstance(tree, dict) else None
    if not isinstance(target, dict):
      raise UserError(f'{checkpoint_file} has no optimizer/target tree; is it a T5X checkpoint?')
    self.version = tree.get('version')
    self._leaves = _flatten(target)

  def keys(self) -> list[str]:
    return list(self._leaves)

  def _spec(self, key: str) -> dict:
    spec = dict(self._leaves[key])
    spec['kvstore'] = kvstore_for(self.directory, spec)
    spec.pop('path', None)
    return spec

  def shape(self, key: str) -> tuple[int, ...]:
    leaf = self._leaves[key]
    if not is_tensorstore_spec(leaf):
      return tuple(np.shape(leaf))
    if 'shape' in leaf.get('metadata', {}):
      return tuple(leaf['metadata']['shape'])
    return tuple(ts.open(self._spec(key), read=True).result().shape)

  def read(self, key: str) -> np.ndarray:
    leaf = self._leaves[key]
    if not is_tensorstore_spec(leaf):
      return np.asarray(leaf)
    try:
      return ts.open(self._spec(key), read=True).result().read().result()
    except ValueError as e:
      raise UserError(f'Cannot read {key!r} of the T5X checkpoint in {self.directory}: {e}') from e
