"""gin/t5x/*.gin without t5x: every binding and reference to t5pt names a real
configurable and parameter, includes resolve, macros are defined, and each Flan-T5 file
builds the same network as t5pt's own file of that name. (With t5x installed,
tests/test_t5x_route.py runs them for real.)"""

import dataclasses
import glob
import importlib
import importlib.util
import inspect
import os

import pytest
from gin import config_parser

from t5pt import network

from tests.conftest import REPO

GIN = os.path.join(REPO, 'gin')
T5X_FILES = sorted(glob.glob(os.path.join(GIN, 't5x', '*.gin')))
# Macros t5x's run configs (t5x/configs/runs/{finetune,infer,eval}.gin) define or use.
T5X_RUN_MACROS = {
  'MODEL',
  'MODEL_DIR',
  'MIXTURE_OR_TASK_NAME',
  'MIXTURE_OR_TASK_MODULE',
  'TASK_FEATURE_LENGTHS',
  'TRAIN_STEPS',
  'BATCH_SIZE',
  'INITIAL_CHECKPOINT_PATH',
  'DROPOUT_RATE',
  'USE_CACHED_TASKS',
  'CHECKPOINT_PATH',
}


@dataclasses.dataclass(frozen=True)
class _Macro:
  name: str


class _Recorder(config_parser.ParserDelegate):
  def __init__(self):
    self.references, self.macros = [], []

  def configurable_reference(self, scoped_name, evaluate):
    self.references.append(scoped_name)
    return f'@{scoped_name}'

  def macro(self, macro_name):
    self.macros.append(macro_name)
    return _Macro(macro_name)


@dataclasses.dataclass
class _File:
  bindings: list
  imports: dict  # alias -> module
  includes: list
  references: list
  macros: list


def _parse(path: str) -> _File:
  recorder = _Recorder()
  with open(path) as f:
    statements = list(config_parser.ConfigParser(f, recorder))
  imports = {
    s.bound_name(): s.module
    for s in statements
    if isinstance(s, config_parser.ImportStatement) and s.module != '__gin__.dynamic_registration'
  }
  return _File(
    [s for s in statements if isinstance(s, config_parser.BindingStatement)],
    imports,
    [s.filename for s in statements if isinstance(s, config_parser.IncludeStatement)],
    recorder.references,
    recorder.macros,
  )


def _with_includes(path: str) -> list[_File]:
  parsed = _parse(path)
  files = [parsed]
  for name in parsed.includes:
    if not name.startswith('t5x/configs/'):
      files += _with_includes(os.path.join(GIN, name))
  return files


def _t5pt_target(imports: dict, selector: str):
  """The t5pt object a selector such as 'network.T5Config' names, or None (t5x, flax)."""
  alias, _, name = selector.rpartition('.')
  module = imports.get(alias)
  if module is None:  # a file without dynamic registration names t5pt's registrations
    module = f't5pt.{alias}' if importlib.util.find_spec(f't5pt.{alias}') else None
  if not module or not module.startswith('t5pt.'):
    return None
  target = getattr(importlib.import_module(module), name, None)
  assert target is not None, f'{selector}: {module} has no {name}'
  return target


def _parameters(target) -> set[str]:
  if dataclasses.is_dataclass(target):
    return {f.name for f in dataclasses.fields(target)}
  return set(inspect.signature(target).parameters)


@pytest.mark.parametrize('path', T5X_FILES, ids=os.path.basename)
def test_t5pt_bindings_and_references_exist(path):
  parsed = _parse(path)
  for binding in parsed.bindings:
    if not binding.arg_name:  # a macro definition
      continue
    target = _t5pt_target(parsed.imports, binding.selector.split('/')[-1])
    if target is not None:
      assert binding.arg_name in _parameters(target), (
        f'{path}:{binding.location.line_num}: {binding.selector}.{binding.arg_name}'
      )
  for reference in parsed.references:
    _t5pt_target(parsed.imports, reference.split('/')[-1])


@pytest.mark.parametrize('path', T5X_FILES, ids=os.path.basename)
def test_includes_resolve_and_macros_are_defined(path):
  files = _with_includes(path)
  for parsed in files:
    for name in parsed.includes:
      assert name.startswith('t5x/configs/') or os.path.exists(os.path.join(GIN, name)), name
  defined = {b.selector for f in files for b in f.bindings if not b.arg_name}
  for parsed in files:
    for macro in parsed.macros:
      if macro == 'gin.REQUIRED':
        continue
      if '.' in macro:  # a gin constant: registered by importing its module
        module, name = macro.rsplit('.', 1)
        assert hasattr(importlib.import_module(f't5pt.{module}'), name), macro
      else:
        assert macro in defined | T5X_RUN_MACROS, f'{path}: %{macro} is not defined'


def _network_bindings(path: str) -> dict:
  """{T5Config field: value} as the file and its includes bind it (literals only)."""
  files = _with_includes(path)
  macros = {b.selector: b.value for f in files for b in f.bindings if not b.arg_name}
  return {
    b.arg_name: macros[b.value.name] if isinstance(b.value, _Macro) else b.value
    for f in files
    for b in f.bindings
    if b.selector == 'network.T5Config'
  }


@pytest.mark.parametrize(
  'path', [p for p in T5X_FILES if os.path.basename(p).startswith('flan_t5_')], ids=os.path.basename
)
def test_flan_files_build_t5pts_network(path):
  """gin/t5x/flan_t5_<size>_<method>.gin and gin/flan_t5_<size>_<method>.gin agree on
  every architecture size, and the t5x file restores the public T5X checkpoint."""
  twin = os.path.join(GIN, os.path.basename(path))
  mine, theirs = _network_bindings(path), _network_bindings(twin)
  for field in network.ARCHITECTURE_FIELDS:
    assert mine[field] == theirs[field], field
  (checkpoint,) = [
    b.value for b in _parse(path).bindings if b.selector == 'INITIAL_CHECKPOINT_PATH'
  ]
  size = os.path.basename(path).split('_')[2]
  assert checkpoint.startswith(f'gs://t5-data/pretrained_models/t5x/flan_t5_{size}/checkpoint_')
