"""The tuning methods, one module each (PEFT's tuners/<method>/ in one file), and the
transforms of the frozen base. See base.py for what a method declares and the insertion
points the network calls.

  prompt            soft prompt before the embedded input          PROMPT_LENGTH
  deep_prompt       trained key/value prefixes in every attention  PREFIX_LENGTH
  lora              low-rank updates of chosen dense kernels       LORA_RULES
  ia3               learned scales of chosen dense kernels         IA3_PATTERN
  parallel_adapter  bottleneck adapters beside the MLP sublayer    T5Config.methods
  int8              the frozen kernels stored as int8              INT8_BASE

Every module of this package that defines `METHOD` is a method: adding one means adding
its module (docs/adding_a_method.md walks through it). The functions below are what the
rest of t5pt asks of the methods together.
"""

import dataclasses
import importlib
import pkgutil
from typing import Mapping, Sequence

import numpy as np

from t5pt.model.methods import base
from t5pt.runtime.errors import UserError


def _discover() -> tuple[base.Method, ...]:
  found = []
  for info in pkgutil.iter_modules(__path__):
    module = importlib.import_module(f'{__name__}.{info.name}')
    if hasattr(module, 'METHOD'):
      found.append(module.METHOD)
  return tuple(sorted(found, key=lambda m: (m.order, m.name)))


ALL: tuple[base.Method, ...] = _discover()
BY_NAME: dict[str, base.Method] = {m.name: m for m in ALL}


def enabled(config) -> tuple[base.Method, ...]:
  """The methods `config` turns on, in their order."""
  return tuple(m for m in ALL if m.enabled(config))


def check(config) -> None:
  """Every method's settings, then that `T5Config.methods` names only known methods."""
  for method in ALL:
    method.check(config)
  unknown = sorted({name for name, _ in config.methods} - set(BY_NAME))
  if unknown:
    raise UserError(
      f'network.T5Config.methods names {unknown}, which t5pt does not know; the methods '
      f'are {sorted(BY_NAME)}.'
    )


def check_kernels(config, kernel_paths: Sequence[str]) -> None:
  for method in enabled(config):
    method.check_kernels(config, kernel_paths)


def check_run(config, shapes, trainable_paths, frozen_paths, base) -> None:
  """The run's tree against the methods: rules select kernels, what a method adds is
  trained (a frozen one would be loaded from a base that has none), and each method's
  own checks of the run (`shapes` {path: ShapeDtypeStruct}, `base` the base checkpoint's
  path or None)."""
  check_kernels(config, [p for p in shapes if p.endswith('/kernel')])
  frozen_adapters = [p for p in frozen_paths if must_train(p)]
  if frozen_adapters:
    raise UserError(
      f'{len(frozen_adapters)} adapter parameter(s), e.g. '
      f'{frozen_adapters[0]!r}, are not in TRAINABLE. Add their pattern '
      "(e.g. '.*/lora_[ab]' or '.*/ia3_scale') to TRAINABLE, leave TRAINABLE "
      'unset (the method decides), or drop the adapter rules.'
    )
  for method in enabled(config):
    method.check_run(config, shapes, trainable_paths, base)


def trainable(config) -> tuple[str, ...]:
  """Regexes of the parameters the enabled methods add: what trains by default."""
  return tuple(p for m in enabled(config) for p in m.trainable(config))


def owner(path: str):
  """The method that adds the parameter at `path`, or None for a base parameter."""
  return next((m for m in ALL if m.owns(path)), None)


def is_added(path: str) -> bool:
  """Whether a parameter exists only for tuning, not in a base model."""
  return owner(path) is not None


def must_train(path: str) -> bool:
  """Whether the parameter is one a method adds that a base cannot supply frozen."""
  method = owner(path)
  return method is not None and method.must_train


def axes() -> tuple[str, ...]:
  """The logical axes the methods add (replicated on the mesh)."""
  return tuple(dict.fromkeys(axis for m in ALL for axis in m.axes))


def input_positions(config) -> int:
  return sum(m.input_positions(config) for m in enabled(config))


def recognise(config, shapes: base.Shapes, setting: str, path: str):
  """`config` with what a checkpoint's tuned shapes imply (a t5x run's); a value gin set
  must agree."""
  updates = {}
  for method in ALL:
    updates.update(method.recognise(config, shapes, setting, path))
  for field, value in updates.items():
    if getattr(config, field) not in (0, value):
      raise UserError(
        f'network.T5Config.{field} = {getattr(config, field)} in gin, but {path} was trained '
        f'with {value}; drop the binding.'
      )
  return dataclasses.replace(config, **updates)


def merge(params: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
  """Folds every mergeable method into its kernels: {path: array} without their leaves.

  Changed kernels come back float32; int8 kernels come back dequantised (float32), so the
  result is a float model.
  """
  mergeable = [m for m in ALL if m.hf_export == 'merge']
  leaves = {leaf for m in mergeable for leaf in m.leaves}
  merged = {k: v for k, v in params.items() if k.rsplit('/', 1)[-1] not in leaves}
  for path in [k for k in merged if k.endswith('/kernel')]:
    module = path[: -len('kernel')]
    if not any(module + leaf in params for leaf in leaves):
      continue
    kernel = np.asarray(merged[path], np.float32)
    for method in mergeable:
      kernel = method.merge_kernel(config, path, kernel, params)
    merged[path] = kernel
  return merged


def peft_types(model_dir: str, params: Mapping[str, np.ndarray]) -> set[str]:
  """The PEFT types of the methods that trained `params`; a UserError naming the first
  trained method that no PEFT adapter holds."""
  trained = [m for m in ALL if any(m.owns(k) for k in params)]
  for method in trained:
    refusal = method.export_refusal(model_dir, sorted(k for k in params if method.owns(k)))
    if refusal:
      raise UserError(refusal)
  return {m.peft_type for m in trained if m.peft_type}


def fresh_leaves_pattern() -> str:
  """A regex of every tuned parameter and its optimizer slots below it, by leaf name
  (t5x's assignment_map: these start from their initialisers, not from the base)."""
  leaves = dict.fromkeys(leaf for m in ALL if not m.transform for leaf in m.leaves)
  return rf'.*/({"|".join(leaves)})(/.*)?'
