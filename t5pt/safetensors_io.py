"""Reading safetensors files one tensor at a time, and writing sharded HF weight folders.

Reading parses the (documented, JSON-headed) safetensors layout directly rather than
through `safetensors.safe_open`, for two reasons that matter for 11B models: its numpy
backend cannot return bfloat16 (numpy has no such dtype; ml_dtypes does), and it memory-
maps the file, so every tensor read stays resident in the process (RSS) until the file is
closed, which doubles peak host memory while loading. `np.fromfile` at an offset reads
exactly one tensor into fresh memory. Writing uses the `safetensors` library.
"""

import json
import os
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from t5pt.errors import UserError

_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
           'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32, 'I16': np.int16,
           'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}
INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'


class SafetensorsFile:
  """Lazily reads tensors of one .safetensors file (header parsed once)."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, 'rb') as f:
        (header_size,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(header_size))
    except (OSError, struct.error, ValueError) as e:
      raise UserError(f'{path} is not a readable safetensors file ({e}).') from e
    header.pop('__metadata__', None)
    self._data_start = 8 + header_size
    self._entries = header

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape_dtype(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
    entry = self._entries[key]
    if entry['dtype'] not in _DTYPES:
      raise UserError(f'{self.path}: tensor {key!r} has dtype {entry["dtype"]}, which t5pt '
                      f'does not read ({sorted(_DTYPES)}).')
    return tuple(entry['shape']), np.dtype(_DTYPES[entry['dtype']])

  def shape(self, key: str) -> tuple[int, ...]:
    return self.shape_dtype(key)[0]

  def read(self, key: str) -> np.ndarray:
    shape, dtype = self.shape_dtype(key)
    start, end = self._entries[key]['data_offsets']
    count = int(np.prod(shape, dtype=np.int64))
    if (end - start) != count * dtype.itemsize:
      raise UserError(f'{self.path}: tensor {key!r} is truncated or corrupt '
                      f'({end - start} bytes for shape {shape} {dtype}).')
    array = np.fromfile(self.path, dtype=dtype, count=count, offset=self._data_start + start)
    return array.reshape(shape)


def open_folder(folder: str) -> dict[str, SafetensorsFile]:
  """{tensor key: file holding it} for an HF folder (single file or sharded with index)."""
  index = os.path.join(folder, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    files = {name: SafetensorsFile(os.path.join(folder, name))
             for name in sorted(set(weight_map.values()))}
    return {key: files[name] for key, name in weight_map.items()}
  single = SafetensorsFile(os.path.join(folder, SINGLE_FILE))
  return {key: single for key in single.keys()}


def write_sharded(folder: str, tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int) -> list[str]:
  """Writes (key, array) pairs into `folder` as HF does: one model.safetensors, or
  model-0000i-of-0000n.safetensors shards plus an index once `max_shard_bytes` is passed.

  At most one shard is held in memory; the pairs are consumed lazily. Returns file names.
  """
  shards, current, current_bytes, total = [], {}, 0, 0

  def flush():
    nonlocal current, current_bytes
    name = f'shard-{len(shards):05d}.tmp.safetensors'
    save_file(current, os.path.join(folder, name), metadata={'format': 'pt'})
    shards.append((name, list(current)))
    current, current_bytes = {}, 0

  for key, array in tensors:
    if current and current_bytes + array.nbytes > max_shard_bytes:
      flush()
    current[key] = np.ascontiguousarray(array)
    current_bytes += array.nbytes
    total += array.nbytes
  if current or not shards:
    flush()
  if len(shards) == 1:
    os.rename(os.path.join(folder, shards[0][0]), os.path.join(folder, SINGLE_FILE))
    return [SINGLE_FILE]
  weight_map, names = {}, []
  for i, (tmp_name, keys) in enumerate(shards):
    name = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    os.rename(os.path.join(folder, tmp_name), os.path.join(folder, name))
    weight_map.update({k: name for k in keys})
    names.append(name)
  _write_json(os.path.join(folder, INDEX_FILE),
              {'metadata': {'total_size': total}, 'weight_map': weight_map})
  return names + [INDEX_FILE]


def _write_json(path: str, value: Mapping) -> None:
  with open(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
