"""The readers of every base checkpoint format, one class each; which one a path needs is
decided in opening.py, never here.

    HFCheckpoint          a transformers T5 folder: config.json and safetensors (single or
                          sharded with an index) or pytorch_model.bin (names mapped by
                          hf_format)
    T5XLegacyCheckpoint   a T5X msgpack `checkpoint` (t5x_legacy)
    OrbaxCheckpoint       an orbax parameter tree: a t5pt checkpoint_<step>'s params, a T5X
                          one's state (target/ or optimizer/target/; its optimizer slots are
                          never read), or a bare item directory

Every reader exposes t5x parameter paths ('encoder/layers_0/attention/query/kernel'), their
shapes without reading data, the architecture it implies, and `load(targets)`, which reads
each tensor, casts it and places it on its target sharding one at a time, so host memory
never holds the model twice.
"""

import io
import re
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from etils import epath

from t5pt.checkpoints import hf_format
from t5pt.checkpoints import run_checkpoints
from t5pt.checkpoints import safetensors_io
from t5pt.checkpoints import t5x_legacy
from t5pt.model import models
from t5pt.model import network
from t5pt.model import quantization
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError


class BaseCheckpoint:
  """A checkpoint read lazily by t5x parameter path."""

  format = 'unknown'

  def __init__(self, path: str):
    self.path = path
    self._shapes = None

  @property
  def description(self) -> str:
    return f'the {self.format} checkpoint at {self.path}'

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """{t5x path: shape}, read from metadata once (no tensor data is read)."""
    if self._shapes is None:
      self._shapes = self._read_shapes()
    return self._shapes

  def _read_shapes(self) -> dict[str, tuple[int, ...]]:
    raise NotImplementedError

  def read(self, name: str) -> np.ndarray:
    """One parameter as a host array in its stored dtype."""
    raise NotImplementedError

  def architecture(self) -> tuple[dict, dict]:
    """(facts, defaults) about network.T5Config; see T5Config.reconcile."""
    return _architecture_from_shapes(self.shapes())

  def reconcile(self, config: network.T5Config) -> network.T5Config:
    facts, defaults = self.architecture()
    return config.reconcile(facts, self.description, defaults)

  def check(self, targets: Mapping[str, jax.ShapeDtypeStruct]) -> None:
    """Raises a UserError unless every target exists here with the same shape."""
    shapes = self.shapes()
    missing = [k for k in targets if k not in shapes]
    if missing:
      raise UserError(
        f'{self.description} lacks {len(missing)} parameter(s) the model '
        f'needs, e.g. {missing[:3]}. Is it a checkpoint of the same '
        'architecture (network.T5Config)?'
      )
    for name, target in targets.items():
      if tuple(shapes[name]) != tuple(target.shape):
        raise UserError(
          f'Parameter {name!r} has shape {tuple(shapes[name])} in '
          f'{self.description} but the model expects {tuple(target.shape)}. '
          'The gin network.T5Config sizes must match the checkpoint.'
        )

  def load(
    self, targets: Mapping[str, jax.ShapeDtypeStruct], progress: bool = False
  ) -> dict[str, jax.Array]:
    """Reads the listed parameters, each cast and sharded as its target says. An int8
    kernel target is quantised on the host as it is read, filling its `kernel_scale`."""
    stored = {k: v for k, v in targets.items() if not quantization.is_scale(k)}
    self.check(stored)
    loaded = {}
    for name in tqdm.tqdm(
      list(stored), desc='load base', unit='tensor', disable=not progress, leave=False
    ):
      for key, array in quantization.stored_tensors(
        name, self.read(name), stored[name].dtype
      ).items():
        loaded[key] = place(array, targets[key])
    return loaded

  def load_model(
    self,
    config: network.T5Config = network.T5Config(),
    dtype: str = 'float32',
    mesh: Optional[jax.sharding.Mesh] = None,
    rules: partitioning.LogicalRules = partitioning.STANDARD_LOGICAL_AXIS_RULES,
  ) -> tuple[network.T5Config, dict]:
    """(completed config, nested params) of the model this checkpoint holds, sharded over
    `mesh` (default: PartitionConfig's, one replica per device) by the logical rules.

    Parameters `config` has but the checkpoint lacks (a soft prompt or adapters a base
    model does not have) are left out; the caller supplies them.
    """
    config = self.reconcile(config).require_complete()
    targets = model_targets(
      config, dtype, mesh or partitioning.PartitionConfig().make_mesh(), rules
    )
    stored = self.shapes()
    targets = {k: v for k, v in targets.items() if k in stored or not network.is_added_by_tuning(k)}
    return config, partitioning.unflatten(self.load(targets))

  def read_all(self) -> dict[str, np.ndarray]:
    """Every parameter as a host array {t5x path: array}."""
    return {name: self.read(name) for name in self.shapes()}


def place(array: np.ndarray, target: jax.ShapeDtypeStruct) -> jax.Array:
  """Puts one host array onto `target.sharding` in `target.dtype`; each device receives
  only its own slice, cast on the way."""
  return jax.make_array_from_callback(
    target.shape, target.sharding, lambda index: np.asarray(array[index], dtype=target.dtype)
  )


def _architecture_from_shapes(shapes: Mapping[str, tuple]) -> tuple[dict, dict]:
  """What tensor shapes say about the architecture (t5x/t5pt checkpoints carry no config)."""
  facts = {}
  if network.EMBEDDING_PATH in shapes:
    facts['vocab_size'], facts['emb_dim'] = shapes[network.EMBEDDING_PATH]
    facts['logits_via_embedding'] = network.LOGITS_PATH not in shapes
  relpos = shapes.get('encoder/relpos_bias/rel_embedding')
  if relpos:
    facts['num_heads'], facts['relative_attention_num_buckets'] = relpos
    query = shapes.get('encoder/layers_0/attention/query/kernel')
    if query:
      facts['head_dim'] = query[1] // relpos[0]
  for side in ('encoder', 'decoder'):
    layers = {int(m.group(1)) for k in shapes for m in [re.match(rf'{side}/layers_(\d+)/', k)] if m}
    if layers:
      facts[f'num_{side}_layers'] = max(layers) + 1
  gated = 'encoder/layers_0/mlp/wi_0/kernel' in shapes
  wi = shapes.get(f'encoder/layers_0/mlp/{"wi_0" if gated else "wi"}/kernel')
  defaults = {'relative_attention_max_distance': 128}
  if wi:
    facts['mlp_dim'] = wi[1]
    defaults['mlp_activations'] = ('gelu', 'linear') if gated else ('relu',)
  return facts, defaults


class HFCheckpoint(BaseCheckpoint):
  """A transformers T5 folder: config.json and safetensors (or pytorch_model.bin)."""

  format = 'Hugging Face'

  def __init__(self, path: str):
    super().__init__(path)
    config_file = fs.join(path, 'config.json')
    try:
      self.hf_config = fs.read_json(config_file)
      self._architecture = hf_format.architecture_from_hf(self.hf_config, config_file)
    except (ValueError, KeyError) as e:
      raise UserError(f'{config_file} is not a usable T5 config.json ({e!r}).') from e
    self._tensors = _open_hf_tensors(path)
    config = network.T5Config(**self._architecture)
    names = hf_format.parameter_names(config)
    if network.LOGITS_PATH in names and names[network.LOGITS_PATH] not in self._tensors:
      names[network.LOGITS_PATH] = names[network.EMBEDDING_PATH]  # saved tied, used unscaled
    self._names = {ours: theirs for ours, theirs in names.items() if theirs in self._tensors}

  def architecture(self) -> tuple[dict, dict]:
    return dict(self._architecture), {}

  def _read_shapes(self) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for ours, theirs in self._names.items():
      shape = self._tensors[theirs].shape(theirs)
      shapes[ours] = shape[::-1] if hf_format.needs_transpose(ours) else shape
    return shapes

  def read(self, name: str) -> np.ndarray:
    array = self._tensors[self._names[name]].read(self._names[name])
    return array.T if hf_format.needs_transpose(name) else array


class _TorchTensors:
  """pytorch_model.bin (older hub folders), memory-mapped through torch."""

  def __init__(self, state_dict):
    self._state = state_dict

  def keys(self):
    return list(self._state)

  def shape(self, key):
    return tuple(self._state[key].shape)

  def read(self, key):
    import torch  # pylint: disable=import-outside-toplevel

    tensor = self._state[key]
    if tensor.dtype == torch.bfloat16:
      return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def _pytorch_bin_files(folder: str) -> list[str]:
  """pytorch_model.bin, or the shards named by pytorch_model.bin.index.json."""
  index = fs.join(folder, 'pytorch_model.bin.index.json')
  if fs.exists(index):
    return [
      fs.join(folder, name) for name in sorted(set(fs.read_json(index)['weight_map'].values()))
    ]
  single = fs.join(folder, 'pytorch_model.bin')
  return [single] if fs.exists(single) else []


def _open_hf_tensors(folder: str) -> dict:
  """{HF key: reader with .shape(key) / .read(key)} for the folder's weight files."""
  if any(
    fs.exists(fs.join(folder, f)) for f in (safetensors_io.SINGLE_FILE, safetensors_io.INDEX_FILE)
  ):
    return safetensors_io.open_folder(folder)
  bin_files = _pytorch_bin_files(folder)
  if bin_files:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise UserError(
        f'{folder} holds only pytorch_model*.bin, which needs torch to read. '
        'Install the CPU build (pip install torch) or convert the folder to '
        'safetensors once with transformers: '
        'T5ForConditionalGeneration.from_pretrained(d).save_pretrained(d2).'
      ) from e
    tensors = {}
    for bin_file in bin_files:
      # Local files are memory-mapped: a tensor's bytes are read when it is used. A
      # remote file cannot be, so its tensors are read whole into host memory.
      remote = fs.is_remote(bin_file)
      source = io.BytesIO(fs.read_bytes(bin_file)) if remote else bin_file
      reader = _TorchTensors(
        torch.load(source, map_location='cpu', mmap=not remote, weights_only=True)
      )
      tensors.update({key: reader for key in reader.keys()})
    return tensors
  raise UserError(
    f'{folder} has config.json but no weights: expected '
    f'{safetensors_io.SINGLE_FILE}, {safetensors_io.INDEX_FILE} with its '
    'shards, or pytorch_model.bin (or its shards with an index).'
  )


class T5XLegacyCheckpoint(BaseCheckpoint):
  format = 'T5X (msgpack)'

  def __init__(self, path: str):
    super().__init__(path)
    self._checkpoint = t5x_legacy.LegacyCheckpoint(path)

  def _read_shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: self._checkpoint.shape(k) for k in self._checkpoint.keys()}

  def read(self, name: str) -> np.ndarray:
    return self._checkpoint.read(name)


class OrbaxCheckpoint(BaseCheckpoint):
  """An orbax PyTree of parameters: a t5pt run checkpoint or a T5X orbax checkpoint."""

  format = 'orbax'
  _PARAM_PREFIXES = ('optimizer/target/', 'target/', 'params/')

  def __init__(self, path: str, params_dir: epath.Path):
    super().__init__(path)
    self._dir = params_dir
    self._checkpointer = ocp.PyTreeCheckpointer()
    with run_checkpoints.quiet_orbax_reads():
      tree = self._checkpointer.metadata(params_dir).item_metadata.tree
    stored = partitioning.flatten(tree)
    self._prefix = next(
      (p for p in self._PARAM_PREFIXES if any(k.startswith(p) for k in stored)), ''
    )
    self._stored = {
      k[len(self._prefix) :]: v for k, v in stored.items() if k.startswith(self._prefix)
    }

  def _read_shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in self._stored.items()}

  def _restore(self, item: Mapping[str, object], restore_args: Mapping[str, object]) -> dict:
    nest = lambda flat: partitioning.unflatten({self._prefix + k: v for k, v in flat.items()})
    with run_checkpoints.quiet_orbax_reads():
      restored = self._checkpointer.restore(
        self._dir,
        args=ocp.args.PyTreeRestore(
          item=nest(item), restore_args=nest(restore_args), partial_restore=True
        ),
      )
    flat = partitioning.flatten(restored)
    return {k[len(self._prefix) :]: v for k, v in flat.items()}

  def read(self, name: str) -> np.ndarray:
    return self.read_many([name])[name]

  def read_many(self, names) -> dict[str, np.ndarray]:
    item = {k: self._stored[k] for k in names}
    return self._restore(item, {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in names})

  def read_all(self) -> dict[str, np.ndarray]:
    return self.read_many(list(self.shapes()))

  def load(self, targets, progress: bool = False) -> dict[str, jax.Array]:
    # Orbax reads each array straight into its target sharding, so it does the work of
    # the generic per-tensor loop itself (and faster, in parallel). int8 targets are
    # quantised one tensor at a time instead, so the float model never exists at once.
    if any(t.dtype == jnp.int8 for t in targets.values()):
      return super().load(targets, progress)
    self.check(targets)
    return self._restore(dict(targets), ocp.checkpoint_utils.construct_restore_args(dict(targets)))


def model_targets(
  config: network.T5Config,
  dtype: str,
  mesh: jax.sharding.Mesh,
  rules: partitioning.LogicalRules = partitioning.STANDARD_LOGICAL_AXIS_RULES,
) -> dict[str, jax.ShapeDtypeStruct]:
  """{path: shape, `dtype` and sharding over `mesh`} for every parameter of `config`."""
  boxed = jax.eval_shape(
    lambda rng: models.EncoderDecoderModel(config).init(rng, 1, 1), jax.random.PRNGKey(0)
  )
  shardings = partitioning.param_shardings(boxed, mesh, rules)
  return {
    k: jax.ShapeDtypeStruct(
      v.shape, quantization.storage_dtype(k, v.dtype, dtype), sharding=shardings[k]
    )
    for k, v in partitioning.flatten(nn.unbox(boxed)).items()
  }
