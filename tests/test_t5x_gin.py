"""One gin file per size and method serves both runners, checked without t5x.

Every top-level training file includes run.gin (t5pt's runner) and gin/t5x/tuning.gin
(real t5x's half, which t5pt's runner reads as empty). Here: t5pt's runner parses every
file without importing t5x; the t5x half's bindings and references to t5pt name real
configurables and parameters; every macro the t5x half uses is defined by the file or by
t5x's run configs; and t5pt's library modules define no absl flags (t5x's programs import
them and define flags of the same names). With t5x installed, tests/test_t5x_route.py runs
the files for real."""

import dataclasses
import glob
import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import gin
import t5pt
from gin import config_parser
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.t5x_bridge import t5x_network
from tests.conftest import INTEROP, REPO

GIN = os.path.join(REPO, 'gin')
T5X_HALF = os.path.join(GIN, 't5x', 'tuning.gin')
# Every shipped file that configures training (run.gin's includers), and the Flan-T5 ones.
TRAINING_FILES = sorted(
  p
  for p in glob.glob(os.path.join(GIN, '*.gin')) + glob.glob(os.path.join(GIN, 'demo', '*.gin'))
  if os.path.basename(p) not in ('run.gin', 'infer.gin', 'eval.gin')
)
FLAN_FILES = [p for p in TRAINING_FILES if os.path.basename(p).startswith('flan_t5_')]
# Macros t5x's run configs (t5x/configs/runs/{finetune,infer,eval}.gin) define or use.
T5X_RUN_MACROS = {
  'MODEL',
  'MODEL_DIR',
  'MIXTURE_OR_TASK_NAME',
  'MIXTURE_OR_TASK_MODULE',
  'TASK_FEATURE_LENGTHS',
  'TRAIN_STEPS',
  'TRAIN_STEPS_RELATIVE',
  'RANDOM_SEED',
  'BATCH_SIZE',
  'INITIAL_CHECKPOINT_PATH',
  'DROPOUT_RATE',
  'USE_CACHED_TASKS',
  'CHECKPOINT_PATH',
  'EVAL_PERIOD',
}
# Entry points: the only modules that may define absl flags.
ENTRY_POINTS = {'train', 'infer', 'eval', 'export', 'peft_import', 'plan', 'demo'}


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


def test_t5x_half_bindings_and_references_to_t5pt_exist():
  parsed = _parse(T5X_HALF)
  assert parsed.imports['t5x_network'] == 't5pt.t5x_bridge.t5x_network'
  for binding in parsed.bindings:
    if not binding.arg_name:  # a macro definition
      continue
    target = _t5pt_target(parsed.imports, binding.selector.split('/')[-1])
    if target is not None:
      assert binding.arg_name in _parameters(target), (
        f'{T5X_HALF}:{binding.location.line_num}: {binding.selector}.{binding.arg_name}'
      )
  for reference in parsed.references:
    _t5pt_target(parsed.imports, reference.split('/')[-1])


@pytest.mark.parametrize('path', TRAINING_FILES, ids=os.path.basename)
def test_every_training_file_has_both_halves_and_its_macros_defined(path):
  files = _with_includes(path)
  included = {name for f in files for name in f.includes}
  assert 'run.gin' in included and 't5x/tuning.gin' in included, sorted(included)
  defined = {b.selector for f in files for b in f.bindings if not b.arg_name}
  for parsed in files:
    for macro in parsed.macros:
      if macro == 'gin.REQUIRED':
        continue
      if '.' in macro:  # a gin constant, registered by the modules the files import
        for module in {m for f in files for m in f.imports.values() if m.startswith('t5pt.')}:
          importlib.import_module(module)
        # gin has no public lookup of a constant by name.
        assert gin.config._CONSTANTS.get_match(macro) is not None, macro
      else:
        assert macro in defined | T5X_RUN_MACROS, f'{path}: %{macro} is not defined'


def _depth(path: str) -> int:
  parsed = _parse(path)
  return max([1 + _depth(os.path.join(GIN, name)) for name in parsed.includes] or [0])


@pytest.mark.parametrize('path', TRAINING_FILES, ids=os.path.basename)
def test_gin_stays_shallow(path):
  assert _depth(path) <= 2, path


@pytest.mark.parametrize('path', TRAINING_FILES, ids=os.path.basename)
def test_t5pts_runner_reads_the_t5x_half_as_empty(path):
  gin.clear_config()
  try:
    gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'"])
    macros = gin_utils.defined_macros()
    assert 'TRAIN_STEPS' in macros and 'MODEL' not in macros and 'VOCABULARY' not in macros
  finally:
    gin.clear_config()
  assert not any(name == 't5x' or name.startswith('t5x.') for name in sys.modules)


@pytest.mark.parametrize('path', FLAN_FILES, ids=os.path.basename)
def test_flan_files_name_the_public_t5x_checkpoint_of_their_size(path):
  (checkpoint,) = [
    b.value
    for f in _with_includes(path)
    for b in f.bindings
    if b.selector == 'T5X_CHECKPOINT_PATH' and b.value is not None
  ]
  size = os.path.basename(path).split('_')[2]
  assert checkpoint.startswith(f'gs://t5-data/pretrained_models/t5x/flan_t5_{size}/checkpoint_')


def test_library_modules_define_no_absl_flags():
  """t5x's train.py defines --multiprocess_gpu, --gin_file & co. and then imports t5pt's
  modules through gin: a library module defining them would stop t5x with a traceback."""
  modules = [
    m.name
    for m in pkgutil.walk_packages(t5pt.__path__, 't5pt.')
    if m.name.split('.')[1] not in ENTRY_POINTS
  ]
  code = (
    'import importlib, sys\n'
    'from absl import flags\n'
    f'for m in {modules!r}: importlib.import_module(m)\n'
    'own = {m: [f.name for f in fs] for m, fs in flags.FLAGS.flags_by_module_dict().items()'
    " if m.startswith('t5pt')}\n"
    'print(own); sys.exit(1 if own else 0)\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


T5X_TINY = os.path.join(INTEROP, 't5x_tiny', 'test_t5_1_1_tiny', 'checkpoint_3')


@pytest.mark.skipif(not os.path.isdir(T5X_TINY), reason='../shared/interop is absent')
def test_base_checkpoint_under_t5x(tmp_path):
  """t5x restores INITIAL_CHECKPOINT_PATH when it is a T5X checkpoint, else
  T5X_CHECKPOINT_PATH (t5pt's files point INITIAL_CHECKPOINT_PATH at an HF download)."""
  public = 'gs://t5-data/pretrained_models/t5x/flan_t5_small/checkpoint_1198000'
  assert t5x_network.base_checkpoint(T5X_TINY, public) == T5X_TINY
  assert t5x_network.base_checkpoint(str(tmp_path / 'flan-t5-small'), public) == public
  assert t5x_network.base_checkpoint(None, public) is None
  with pytest.raises(UserError, match='not a T5X checkpoint'):
    t5x_network.base_checkpoint(str(tmp_path / 'flan-t5-small'), None)


def test_train_steps_count_from_the_base_and_survive_a_resume(tmp_path):
  base = 'gs://t5-data/pretrained_models/t5x/flan_t5_small/checkpoint_1198000'
  model_dir = tmp_path / 'run'
  assert t5x_network.steps_to_train(300, str(model_dir), base) == 300
  assert t5x_network.steps_to_train(300, str(model_dir), None) == 300
  (model_dir / 'checkpoint_1198100').mkdir(parents=True)
  (model_dir / 'checkpoint_tmp').mkdir()
  assert t5x_network.steps_to_train(300, str(model_dir), base) == 200
  (model_dir / 'checkpoint_1198300').mkdir()
  with pytest.raises(UserError, match='complete'):
    t5x_network.steps_to_train(300, str(model_dir), base)
