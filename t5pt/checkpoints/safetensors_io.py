"""Reading safetensors files one tensor at a time, and writing sharded HF weight folders.

Reading parses the (documented, JSON-headed) safetensors layout directly rather than
through `safetensors.safe_open`, for three reasons that matter for 11B models: its numpy
backend cannot return bfloat16 (numpy has no such dtype; ml_dtypes does), it memory-maps
the file, so every tensor read stays resident in the process (RSS) until the file is
closed, which doubles peak host memory while loading, and it reads local files only. Here
each tensor is read from its offset (through t5pt.runtime.fs, so local or gs:// alike) straight
into a freshly allocated array of its dtype, viewed as bytes, so one tensor is held once
and nothing else stays resident. Writing serialises with the `safetensors` library.
"""

import json
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np
import safetensors.numpy

from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}
INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'
_READ_CHUNK = 64 << 20  # Bytes per read() for file objects without readinto.


class SafetensorsFile:
  """Lazily reads tensors of one .safetensors file (header parsed once)."""

  def __init__(self, path: str):
    self.path = path
    try:
      with fs.path(path).open('rb') as f:
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
      raise UserError(
        f'{self.path}: tensor {key!r} has dtype {entry["dtype"]}, which t5pt '
        f'does not read ({sorted(_DTYPES)}).'
      )
    return tuple(entry['shape']), np.dtype(_DTYPES[entry['dtype']])

  def shape(self, key: str) -> tuple[int, ...]:
    return self.shape_dtype(key)[0]

  def read(self, key: str) -> np.ndarray:
    shape, dtype = self.shape_dtype(key)
    start, end = self._entries[key]['data_offsets']
    count = int(np.prod(shape, dtype=np.int64))
    if (end - start) != count * dtype.itemsize:
      raise UserError(
        f'{self.path}: tensor {key!r} is truncated or corrupt '
        f'({end - start} bytes for shape {shape} {dtype}).'
      )
    array = np.empty(shape, dtype)
    with fs.path(self.path).open('rb') as f:
      f.seek(self._data_start + start)
      if not _read_into(f, array.reshape(-1).view(np.uint8)):
        raise UserError(
          f'{self.path}: tensor {key!r} is truncated (the file ends before its data does).'
        )
    return array


def _read_into(f, out: np.ndarray) -> bool:
  """Fills the uint8 array `out` from `f`; False if the file ends first.

  Local and fsspec files read straight into `out` (readinto); TensorFlow's GFile has only
  read(), so its bytes are copied in chunk by chunk.
  """
  readinto = getattr(f, 'readinto', None)
  view, filled = memoryview(out), 0
  while filled < out.size:
    if readinto is not None:
      n = readinto(view[filled:])
    else:
      chunk = f.read(min(_READ_CHUNK, out.size - filled))
      n = len(chunk)
      out[filled : filled + n] = np.frombuffer(chunk, np.uint8)
    if not n:
      return False
    filled += n
  return True


def open_folder(folder: str) -> dict[str, SafetensorsFile]:
  """{tensor key: file holding it} for an HF folder (single file or sharded with index)."""
  index = fs.join(folder, INDEX_FILE)
  if fs.exists(index):
    weight_map = fs.read_json(index)['weight_map']
    files = {
      name: SafetensorsFile(fs.join(folder, name)) for name in sorted(set(weight_map.values()))
    }
    return {key: files[name] for key, name in weight_map.items()}
  single = SafetensorsFile(fs.join(folder, SINGLE_FILE))
  return {key: single for key in single.keys()}


def write_file(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes {key: array} as one .safetensors file (torch-format metadata, as HF writes)."""
  fs.write_bytes(
    path,
    safetensors.numpy.save(
      {k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={'format': 'pt'}
    ),
  )


def plan_shards(nbytes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
  """The keys of each shard, in order: a new shard starts before a tensor that would take
  the current one past `max_shard_bytes` (a larger tensor gets a shard of its own)."""
  shards, current_bytes = [[]], 0
  for key, size in nbytes.items():
    if shards[-1] and current_bytes + size > max_shard_bytes:
      shards.append([])
      current_bytes = 0
    shards[-1].append(key)
    current_bytes += size
  return shards


def write_sharded(
  folder: str,
  nbytes: Mapping[str, int],
  tensors: Iterable[tuple[str, np.ndarray]],
  max_shard_bytes: int,
) -> list[str]:
  """Writes (key, array) pairs into `folder` as HF does: one model.safetensors, or
  model-0000i-of-0000n.safetensors shards plus an index once `max_shard_bytes` is passed.

  `nbytes` gives each key's size in bytes, in the order `tensors` yields them, so that
  the shards are planned, and written under their final names, before any array is
  produced. The pairs are consumed lazily and at most one shard is held in memory (with
  its serialised bytes while it is written). Returns the file names written. The folder
  is expected to be atomic as a whole (fs.atomic_directory), so shards are written in
  place.
  """
  shards = plan_shards(nbytes, max_shard_bytes)
  names = (
    [SINGLE_FILE]
    if len(shards) == 1
    else [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  )
  tensors = iter(tensors)
  for name, keys in zip(names, shards):
    current = {}
    for expected in keys:
      key, array = next(tensors, (None, None))
      if key != expected or array.nbytes != nbytes[key]:
        raise ValueError(
          f'write_sharded: got {key!r} ({getattr(array, "nbytes", None)} '
          f'bytes) where the plan has {expected!r} ({nbytes[expected]} '
          'bytes).'
        )
      current[key] = array
    write_file(fs.join(folder, name), current)
  if next(tensors, None) is not None:
    raise ValueError('write_sharded: more tensors than `nbytes` lists.')
  if len(shards) == 1:
    return names
  fs.write_json(
    fs.join(folder, INDEX_FILE),
    {
      'metadata': {'total_size': sum(nbytes.values())},
      'weight_map': {key: name for name, keys in zip(names, shards) for key in keys},
    },
  )
  return names + [INDEX_FILE]
