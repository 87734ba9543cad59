"""The layout docs/ARCHITECTURE.md draws stays true: commands alone on top of t5pt/, each
package with a docstring that says what it holds, imports only going down, and no module
too long to read."""

import ast
import os
import subprocess
import sys

import gin
import pytest

from t5pt.model import network
from t5pt.runtime import gin_utils
from tests.conftest import REPO

PACKAGE = os.path.join(REPO, 't5pt')
COMMANDS = {'train', 'infer', 'eval', 'export', 'peft_import', 'plan', 'demo'}
# package -> the t5pt packages it may import (docs/ARCHITECTURE.md, "Allowed imports").
ALLOWED = {
  'runtime': set(),
  'tools': {'runtime'},
  'model': {'runtime'},
  'checkpoints': {'model', 'runtime'},
  'serving': {'tools', 'checkpoints', 'model', 'runtime'},
  't5x_bridge': {'checkpoints', 'model', 'runtime'},
  'training': {'serving', 'tools', 'checkpoints', 'model', 'runtime'},
}
MAX_MODULE_LINES = 550


def _modules():
  """(package or None for the top, path) of every module under t5pt/."""
  for root, _, files in os.walk(PACKAGE):
    relative = os.path.relpath(root, PACKAGE)
    package = None if relative == '.' else relative.split(os.sep)[0]
    for name in sorted(files):
      if name.endswith('.py'):
        yield package, os.path.join(root, name)


def _imported_packages(path: str) -> set[tuple[str, int]]:
  """(t5pt package, line) of every import of t5pt in the module, lazy ones included."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module + '.' + alias.name for alias in node.names]
    for name in names:
      parts = name.split('.')
      if parts[0] == 't5pt' and len(parts) > 1:
        found.add((parts[1], node.lineno))
  return found


def test_the_top_of_t5pt_holds_only_the_commands():
  top = {n[:-3] for n in os.listdir(PACKAGE) if n.endswith('.py')} - {'__init__'}
  assert top == COMMANDS
  packages = {n for n in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, n))}
  assert packages - {'__pycache__'} == set(ALLOWED)


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_each_package_says_what_it_holds_and_imports_only_below_it(package):
  init = os.path.join(PACKAGE, package, '__init__.py')
  assert len(ast.get_docstring(ast.parse(open(init).read())) or '') > 100, init
  wrong = [
    f'{os.path.relpath(path, REPO)}:{line} imports t5pt.{imported}'
    for owner, path in _modules()
    if owner == package
    for imported, line in _imported_packages(path)
    if imported != package and imported not in ALLOWED[package]
  ]
  assert not wrong, '\n'.join(wrong)


def test_tasks_import_only_the_runtime_and_commands_only_reach_down():
  tasks = os.path.join(REPO, 'tasks')
  wrong = [
    f'tasks/{name}:{line} imports t5pt.{imported}'
    for name in os.listdir(tasks)
    if name.endswith('.py') and name != 'show.py'  # `python -m tasks.show`, a command
    for imported, line in _imported_packages(os.path.join(tasks, name))
    if imported != 'runtime'
  ]
  assert not wrong, '\n'.join(wrong)
  for command in COMMANDS:
    for imported, line in _imported_packages(os.path.join(PACKAGE, f'{command}.py')):
      assert imported in ALLOWED, f't5pt/{command}.py:{line} imports a command, t5pt.{imported}'


def test_no_module_is_too_long_to_read():
  long = {
    os.path.relpath(path, REPO): n
    for _, path in _modules()
    if (n := sum(1 for _ in open(path))) > MAX_MODULE_LINES
  }
  assert not long, long


def test_the_checker_sees_an_upward_import(tmp_path):
  module = tmp_path / 'm.py'
  module.write_text('def f():\n  from t5pt.training import trainer\n')
  assert _imported_packages(str(module)) == {('training', 2)}


def test_a_config_gin_saved_before_the_move_still_parses():
  gin.clear_config()
  try:
    gin_utils.parse([os.path.join(REPO, 'tests', 'data', 'config_before_layout.gin')], [])
    config = gin.get_configurable(network.T5Config)()
    assert (config.prompt_length, config.emb_dim, config.vocab_size) == (5, 128, 272)
    assert gin.query_parameter('MODEL_DIR/macro.value') == '/runs/prompt_min'
  finally:
    gin.clear_config()
  import t5pt.trainer  # noqa: F401 the name the saved file imports

  assert sys.modules['t5pt.trainer'] is sys.modules['t5pt.training.trainer']


def test_importing_t5pt_starts_no_jax_backend():
  """A command on several hosts starts jax.distributed after its imports (gin's included),
  which JAX refuses once a backend runs: no module may start one when imported."""
  code = (
    'import importlib, pkgutil, t5pt\n'
    "for m in pkgutil.walk_packages(t5pt.__path__, 't5pt.'): importlib.import_module(m.name)\n"
    'from jax._src import xla_bridge\n'
    'print(sorted(xla_bridge._backends))\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]', result.stdout[-500:]
