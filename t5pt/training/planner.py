r"""Will a training run fit? Compiles the run's real train step on abstract shapes and
prints each device's bytes, before any weight is loaded.

  python -m t5pt.plan --gin_file=gin/flan_t5_xxl_prompt.gin --devices=2 --budget_gb=24

The gin files are the training run's own (trainer.train's bindings: sizes, method,
FROZEN_DTYPE, INT8_BASE, BATCH_SIZE, NUM_MICROBATCHES, REMAT_POLICY, OPTIMIZER,
NUM_PARTITIONS). Nothing is read from INITIAL_CHECKPOINT_PATH, so the model file
(gin/models/*.gin) must give the sizes. --devices=N plans for N devices (simulated on
CPU when this machine has fewer); --mesh=DxM sets the data x model mesh. With
--budget_gb the planner also searches for what fits: the lightest setting at BATCH_SIZE
(fewer microbatches and lighter remat first) and the largest batch.

Backends. On a GPU or TPU the temporaries are what XLA allocates there. On CPU (where
--devices simulates a pod) two figures are printed:
- `cpu`: what XLA's CPU compiler allocates, i.e. what a CPU run takes (checked against
  measured runs, bench/RESULTS.md);
- `accelerator estimate`: the CPU temporaries over CPU_OVER_ACCELERATOR_TEMPS, the ratio
  measured between XLA:CPU's plan and an H100's peak for the same steps (XLA:CPU computes
  bfloat16 in float32 and fuses less). Microbatches are estimated from one microbatch
  compiled as a plain step. XLA's CPU compiler drops rematerialisation (it removes
  jax.checkpoint's optimization barriers and merges the recomputation back into the
  forward pass), so a remat policy keeps the share of the residuals JAX says it keeps
  (`saved_residuals` with and without the policy), plus one layer recomputed at a time.
The budget search uses the accelerator figures.
"""

import dataclasses
import inspect
import os
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.ad_checkpoint import saved_residuals  # JAX's account of what backward keeps

import gin
from t5pt.model import models
from t5pt.model import quantization
from t5pt.model import steps
from t5pt.runtime import checks
from t5pt.runtime import data
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.training import optimizers
from t5pt.training import run_setup
from t5pt.training import trainer

GB = 1e9
MAX_SEARCHED_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class Setting:
  """What the search may change: the global batch, microbatches, remat policy."""

  batch_size: int
  num_microbatches: int
  remat_policy: str

  def describe(self) -> str:
    return (
      f'BATCH_SIZE={self.batch_size} NUM_MICROBATCHES={self.num_microbatches} '
      f"REMAT_POLICY='{self.remat_policy}'"
    )


# XLA:CPU's temporaries over an H100's peak activations for the same train step, by
# activation dtype (bench/RESULTS.md, "Memory planner"; T5 1.1 small/base/large, prompt
# tuning and full fine-tuning, within 10% at bfloat16).
CPU_OVER_ACCELERATOR_TEMPS = {'bfloat16': 2.45, 'float32': 1.3}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one training step."""

  setting: Setting
  frozen: int  # frozen parameters (FROZEN_DTYPE, int8 kernels)
  trainable: int  # trainable parameters (float32)
  optimizer: int  # optimizer state
  batch: int  # the step's input batch
  activations: int  # temporaries on the accelerator: saved activations, gradients, workspace
  outputs: int  # outputs that do not reuse a donated input (metrics)
  backend: str
  compile_seconds: float
  cpu_activations: Optional[int] = None  # XLA:CPU's temporaries, planned on CPU

  @property
  def held(self) -> int:
    return self.frozen + self.trainable + self.optimizer + self.batch + self.outputs

  @property
  def total(self) -> int:
    """Peak bytes per device on the accelerator (estimated when planned on CPU)."""
    return self.held + self.activations

  @property
  def cpu_total(self) -> Optional[int]:
    return None if self.cpu_activations is None else self.held + self.cpu_activations


def _train_bindings() -> dict:
  """trainer.train's arguments as the gin files bind them (defaults where unbound)."""
  defaults = {
    name: p.default
    for name, p in inspect.signature(trainer.train).parameters.items()
    if p.default is not inspect.Parameter.empty
  }
  return {**defaults, **gin.get_bindings(trainer.train)}


class Planner:
  """Compiles the train step of one run's settings for a mesh, on abstract shapes."""

  def __init__(self, bindings: dict, mesh):
    self._compiled = {}  # (Setting, float32_base) -> (XLA memory stats, compile seconds)
    self.bindings = bindings
    self.mesh = mesh
    config = bindings['network_config']
    config.check()
    self.network_config = config.require_complete()
    self.lengths = data.converter_lengths(
      bindings['task_feature_lengths'], self.network_config.prompt_length
    )
    self.optimizer = bindings['optimizer'] or optimizers.adafactor()
    self.loss = bindings['loss'] or models.LossConfig()
    self.patterns = run_setup.trainable_patterns(bindings['trainable'], self.network_config)
    self.frozen_dtype = checks.float_dtype(bindings['frozen_dtype'], 'FROZEN_DTYPE')

  def _step_inputs(self, setting: Setting, float32_base: bool = False):
    """(model, train step, its abstract arguments) for one setting; `float32_base` holds
    the frozen base in float32 whatever FROZEN_DTYPE and INT8_BASE say."""
    mesh = self.mesh
    config = dataclasses.replace(self.network_config, remat_policy=setting.remat_policy)
    frozen_dtype = self.frozen_dtype
    if float32_base:
      config, frozen_dtype = dataclasses.replace(config, int8_kernels=False), 'float32'
    model = models.EncoderDecoderModel(config, self.loss)
    params = run_setup.abstract_parameters(
      model, self.lengths, mesh, self.bindings['partition'].logical_axis_rules
    )
    trainable_paths, frozen_paths = partitioning.split_trainable(list(params), self.patterns)
    trainable = partitioning.unflatten({k: params[k] for k in trainable_paths})
    frozen = {
      k: _with_dtype(params[k], quantization.storage_dtype(k, params[k].dtype, frozen_dtype))
      for k in frozen_paths
    }
    tx = self.optimizer.transform
    opt_state = run_setup.abstract_opt_state(tx, trainable, mesh)
    batch = _abstract_batch(
      setting.batch_size, self.lengths, self.bindings['pack'], partitioning.batch_sharding(mesh)
    )
    step = steps.build_train_step(model, tx, jax.random.PRNGKey(0), setting.num_microbatches)
    return model, jax.jit(step, donate_argnums=(0, 1)), (trainable, opt_state, frozen, batch)

  def held_bytes(self, setting: Setting) -> dict[str, int]:
    """Per-device bytes of what the step holds from start to end (parameters, optimizer
    state, batch), from shapes and shardings alone: nothing is compiled."""
    return _held_bytes(*self._step_inputs(setting)[2])

  def _compiled_stats(self, setting: Setting, float32_base: bool = False):
    """(XLA's memory stats, compile seconds) of the step under `setting`, compiled once."""
    key = (setting, float32_base)
    if key not in self._compiled:
      _, step, (trainable, opt_state, frozen, batch) = self._step_inputs(setting, float32_base)
      start = time.perf_counter()
      lowered = step.lower(trainable, opt_state, partitioning.unflatten(frozen), batch, 0)
      stats = lowered.compile().memory_analysis()
      self._compiled[key] = (stats, time.perf_counter() - start)
    return self._compiled[key]

  def plan(self, setting: Setting, cpu_figure: bool = True) -> MemoryPlan:
    """The step's bytes per device. On an accelerator: XLA's plan for it. On CPU: an
    accelerator estimate (module docstring) and, with `cpu_figure`, XLA:CPU's plan of
    the step itself (remat compiled away)."""
    model, _, (trainable, opt_state, frozen, batch) = self._step_inputs(setting)
    held = _held_bytes(trainable, opt_state, frozen, batch)
    cpu_activations = None
    if jax.default_backend() != 'cpu':
      stats, seconds = self._compiled_stats(setting)
      activations = stats.temp_size_in_bytes
    else:
      activations = self._accelerator_activations(model, trainable, frozen, batch, setting)
      stats, seconds = self._compiled_stats(self._microbatch(setting), float32_base=True)
      if cpu_figure:
        stats, seconds = self._compiled_stats(dataclasses.replace(setting, remat_policy='none'))
        cpu_activations = stats.temp_size_in_bytes
    return MemoryPlan(
      setting=setting,
      **held,
      activations=int(activations),
      outputs=max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0),
      backend=jax.default_backend(),
      compile_seconds=seconds,
      cpu_activations=cpu_activations,
    )

  @staticmethod
  def _microbatch(setting: Setting) -> Setting:
    return Setting(setting.batch_size // setting.num_microbatches, 1, 'none')

  def _accelerator_activations(self, model, trainable, frozen, batch, setting) -> float:
    """Activation bytes per device on an accelerator, estimated from XLA:CPU.

    One microbatch is compiled as a plain step of BATCH_SIZE / NUM_MICROBATCHES rows, on
    a float32 base like the H100 steps CPU_OVER_ACCELERATOR_TEMPS was measured on (and
    since XLA:CPU hoists float32 copies of bf16 weights out of the microbatch loop, which
    an accelerator computing in bf16 does not need), plus the gradient sums the loop
    carries. A remat policy keeps its share of JAX's residuals, plus one layer
    rematerialised at a time.
    """
    rows = setting.batch_size // setting.num_microbatches
    stats, _ = self._compiled_stats(self._microbatch(setting), float32_base=True)
    temps = stats.temp_size_in_bytes / CPU_OVER_ACCELERATOR_TEMPS.get(model.config.dtype, 1.0)
    if setting.num_microbatches > 1:
      temps += _device_bytes(jax.tree.leaves(trainable))
    if setting.remat_policy == 'none':
      return temps
    local = {
      k: _shaped(v.shape[1:], v.dtype, rows // self.mesh.shape['data']) for k, v in batch.items()
    }
    kept = {}
    for policy in ('none', setting.remat_policy):
      config = dataclasses.replace(model.config, remat_policy=policy)
      kept[policy] = activation_residual_bytes(
        models.EncoderDecoderModel(config, self.loss), trainable, frozen, local
      )
    layers = model.config.num_encoder_layers + model.config.num_decoder_layers
    return temps * min(1.0, kept[setting.remat_policy] / max(kept['none'], 1) + 1 / layers)

  def measure(self, setting: Setting) -> int:
    """Peak bytes on the first device while the step runs on stand-in values (ones):
    the accelerator's peak, or on CPU the growth of the process's resident memory over
    the step plus the arguments already resident (big buffers must be mmapped, see
    `measurable_cpu_environment`)."""
    _, step, abstract = self._step_inputs(setting)
    trainable, opt_state, frozen, batch = jax.tree.map(_ones, abstract)
    frozen = partitioning.unflatten(frozen)
    compiled = step.lower(trainable, opt_state, frozen, batch, 0).compile()
    run = lambda: jax.block_until_ready(compiled(trainable, opt_state, frozen, batch, 0))
    device = jax.devices()[0]
    if device.platform != 'cpu':
      run()
      return device.memory_stats()['peak_bytes_in_use']
    # XLA's CPU runtime keeps a step's buffers for the next call, so only the first
    # call's growth shows them; its thread pool is started beforehand.
    jax.block_until_ready(jax.jit(lambda x: x @ x)(jnp.ones((256, 256))))
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # Resets the peak resident size (VmHWM) to the current one.
    before = _status_kib('VmRSS')
    run()
    return (_status_kib('VmHWM') - before) * 1024 + _device_bytes(jax.tree.leaves(abstract))


def measurable_cpu_environment() -> dict:
  """Environment for a process whose CPU step memory `Planner.measure` reads: glibc
  serves every allocation over 64 KiB with mmap, so freed buffers leave the resident set."""
  return {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '65536'}


def _status_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _ones(shape: jax.ShapeDtypeStruct) -> jax.Array:
  return jax.jit(lambda: jnp.ones(shape.shape, shape.dtype), out_shardings=shape.sharding)()


def activation_residual_bytes(model, trainable, frozen: dict, batch: dict) -> int:
  """Bytes of the activations the backward pass of the loss keeps (JAX's residuals that
  are neither parameters nor inputs), for abstract `batch` rows."""

  plain = lambda tree: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), tree)
  frozen_tree = plain(partitioning.unflatten(frozen))

  def loss(params, frozen_tree, batch):
    return model.loss_and_metrics(steps.combine(frozen_tree, params), batch)[0]

  residuals = saved_residuals(loss, plain(trainable), frozen_tree, plain(batch))
  return int(
    sum(
      np.prod(aval.shape) * aval.dtype.itemsize
      for aval, source in residuals
      if not source.startswith(('from the argument', 'from a constant'))
    )
  )


def _shaped(shape, dtype, rows: int):

  return jax.ShapeDtypeStruct((rows, *shape), dtype)


def _with_dtype(shape, dtype):

  return jax.ShapeDtypeStruct(shape.shape, dtype, sharding=shape.sharding)


def _abstract_batch(batch_size: int, lengths: dict, pack: bool, sharding) -> dict:
  """The features the train step receives, as abstract global arrays [batch, length]."""

  features = {
    'encoder_input_tokens': lengths['inputs'],
    'decoder_input_tokens': lengths['targets'],
    'decoder_target_tokens': lengths['targets'],
  }
  if pack:
    for side, key in (('encoder', 'inputs'), ('decoder', 'targets')):
      features[f'{side}_segment_ids'] = lengths[key]
      features[f'{side}_positions'] = lengths[key]
  batch = {
    name: jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=sharding)
    for name, length in features.items()
  }
  batch['decoder_loss_weights'] = jax.ShapeDtypeStruct(
    (batch_size, lengths['targets']), jnp.float32, sharding=sharding
  )
  return batch


def _held_bytes(trainable, opt_state, frozen: dict, batch: dict) -> dict[str, int]:
  return dict(
    frozen=_device_bytes(frozen.values()),
    trainable=_device_bytes(jax.tree.leaves(trainable)),
    optimizer=_device_bytes(jax.tree.leaves(opt_state)),
    batch=_device_bytes(batch.values()),
  )


def _device_bytes(shapes) -> int:
  """Bytes one device holds of these abstract (sharded) arrays: the largest shard."""
  total = 0
  for s in shapes:
    shard = s.sharding.shard_shape(s.shape) if s.sharding is not None else s.shape
    total += int(np.prod(shard)) * s.dtype.itemsize
  return total


def parse_mesh(text: Optional[str], devices: int, num_partitions: int) -> tuple[int, int]:
  """(data, model) from --mesh 'DxM', or from the device count and NUM_PARTITIONS."""
  if text is None:
    if devices % num_partitions:
      raise UserError(
        f'NUM_PARTITIONS={num_partitions} does not divide --devices={devices}; '
        'set --mesh=DxM or another NUM_PARTITIONS.'
      )
    return devices // num_partitions, num_partitions
  match = re.fullmatch(r'(\d+)x(\d+)', text.strip())
  if not match or int(match.group(1)) * int(match.group(2)) != devices:
    raise UserError(
      f"--mesh={text!r}: write DATAxMODEL with DATA*MODEL = --devices={devices}, e.g. "
      f"--mesh={devices}x1 or --mesh=1x{devices}."
    )
  return int(match.group(1)), int(match.group(2))


def search(
  planner: Planner, start: Setting, budget: float
) -> tuple[Optional[MemoryPlan], Optional[MemoryPlan]]:
  """(lightest setting at the configured batch that fits, largest batch that fits with
  the configured microbatches and remat); either None when nothing fits."""
  data = planner.mesh.shape['data']
  lightest = None
  for remat in ('none', 'minimal', 'full'):
    m = 1
    while start.batch_size % m == 0 and (start.batch_size // m) % data == 0:
      plan = planner.plan(Setting(start.batch_size, m, remat))
      if plan.total <= budget:
        lightest = plan
        break
      m *= 2
    if lightest:
      break
  # The largest batch: from BATCH_SIZE, doubling while it fits or halving until it does.
  step = data * start.num_microbatches
  fitting = lambda b: planner.plan(dataclasses.replace(start, batch_size=b)).total <= budget
  batch = max(step, start.batch_size // step * step)
  if fitting(batch):
    while batch * 2 <= MAX_SEARCHED_BATCH and fitting(batch * 2):
      batch *= 2
  else:
    while batch > step and not fitting(batch):
      batch = max(step, batch // 2 // step * step)
  largest = planner.plan(dataclasses.replace(start, batch_size=batch))
  if largest.total > budget:
    largest = None
  return lightest, largest


def describe(plan: MemoryPlan) -> str:
  gb = lambda b: f'{b / GB:8.3f} GB'
  lines = [
    f'  {plan.setting.describe()}',
    f'    frozen parameters   {gb(plan.frozen)}',
    f'    trainable           {gb(plan.trainable)}',
    f'    optimizer state     {gb(plan.optimizer)}',
    f'    batch               {gb(plan.batch)}',
  ]
  if plan.cpu_total is None:
    lines += [
      f'    activations, temps  {gb(plan.activations)}',
      f'    total per device    {gb(plan.total)}   ({plan.backend}, compiled in '
      f'{plan.compile_seconds:.0f} s)',
    ]
  else:
    lines += [
      f'    activations, temps  {gb(plan.activations)}   accelerator estimate; '
      f'{plan.cpu_activations / GB:.2f} GB on CPU',
      f'    total per device    {gb(plan.total)}   accelerator estimate; '
      f'{plan.cpu_total / GB:.2f} GB on CPU (compiled in {plan.compile_seconds:.0f} s)',
    ]
  return '\n'.join(lines)


def simulate_devices(count: int) -> None:
  """Lets the CPU backend offer `count` devices (before jax starts its backends)."""
  flag = f'--xla_force_host_platform_device_count={count}'
  os.environ['XLA_FLAGS'] = ' '.join(
    [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f] + [flag]
  )


def make_mesh(devices: Optional[int], mesh_text: Optional[str], num_partitions: int):

  count = devices or jax.device_count()
  pool = jax.devices() if jax.device_count() >= count else jax.devices('cpu')
  if len(pool) < count:
    raise UserError(f'--devices={count}: only {len(pool)} CPU devices could be simulated.')
  shape = parse_mesh(mesh_text, count, num_partitions)
  return jax.sharding.Mesh(np.asarray(pool[:count]).reshape(shape), ('data', 'model'))


def check_batch_on_mesh(batch_size, num_microbatches, mesh) -> None:
  """Train's check of BATCH_SIZE and NUM_MICROBATCHES on the mesh (checks.batch_on_mesh),
  its message followed by the meshes and batch sizes that would plan."""
  checks.batch_and_microbatches(batch_size, num_microbatches)
  try:
    checks.batch_on_mesh(batch_size, num_microbatches, mesh)
  except UserError as e:
    data, model = mesh.shape['data'], mesh.shape['model']
    count = data * model
    rows = batch_size // num_microbatches
    meshes = [
      f'--mesh={d}x{count // d}' for d in range(1, count + 1) if not count % d and not rows % d
    ]
    step = data * num_microbatches
    raise UserError(
      f'{e} The plan is for --mesh={data}x{model} on --devices={count}: plan with '
      f'{" or ".join(meshes[:-3:-1])}, or a BATCH_SIZE that splits over {data} data shards, '
      f'e.g. --gin.BATCH_SIZE={-(-batch_size // step) * step}.'
    ) from None


def main_plan(devices: Optional[int], mesh_text: Optional[str], budget_gb: Optional[float]) -> list:
  """Plans the run the parsed gin describes; prints and returns the plans made."""
  bindings = _train_bindings()
  mesh = make_mesh(devices, mesh_text, bindings['partition'].num_partitions)
  check_batch_on_mesh(bindings['batch_size'], bindings['num_microbatches'], mesh)
  planner = Planner(bindings, mesh)
  cfg = planner.network_config
  start = Setting(bindings['batch_size'], bindings['num_microbatches'], cfg.remat_policy)
  print(
    f'Plan: T5 {cfg.emb_dim}d x {cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, '
    f'lengths {planner.lengths} (+{cfg.prompt_length} prompt), FROZEN_DTYPE='
    f"'{planner.frozen_dtype}'{', int8 kernels' if cfg.int8_kernels else ''}, mesh "
    f"data={mesh.shape['data']} x model={mesh.shape['model']}"
  )
  plans = [planner.plan(start)]
  print(describe(plans[0]))
  if budget_gb is not None:
    budget = budget_gb * GB
    lightest, largest = search(planner, start, budget)
    print(f'Within {budget_gb:g} GB per device:')
    print(describe(lightest) if lightest else f'  nothing fits at BATCH_SIZE={start.batch_size}')
    print(
      f'  largest batch: {largest.setting.batch_size} ({largest.total / GB:.2f} GB)'
      if largest
      else '  no batch fits with these microbatches and remat'
    )
    plans += [p for p in (lightest, largest) if p]
  return plans
