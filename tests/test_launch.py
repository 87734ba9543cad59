"""launch.sh picks JAX's build for the machine (CPU, CUDA 12, TPU) on fake hardware, and
t5pt/runtime/backend_check.py warns when a run got the CPU on a machine with an accelerator.

launch.sh runs against a stub virtual environment whose `python` only logs its arguments,
so every pip call it would make is observable and nothing is installed; the hardware is a
fake `nvidia-smi` on PATH, TPU environment variables and a fake /dev and /sys tree
(T5PT_SYSROOT)."""

import os
import re
import subprocess
import sys

import jax
import pytest

from t5pt.runtime import backend_check
from tests.conftest import REPO

LAUNCH = os.path.join(REPO, 'launch.sh')
JAX_PIN = re.search(r'^jax==(\S+)$', open(os.path.join(REPO, 'requirements.txt')).read(), re.M)[1]
GPU_LIST = 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f6e4d4c-1b2a-4c3d-9e8f-0a1b2c3d4e5f)'
STUB_PYTHON = """#!/usr/bin/env bash
printf '%s\\t%s\\n' "${JAX_PLATFORMS:-}" "$*" >> "$(dirname "$0")/../calls"
"""
CLEARED = ('T5PT_ACCELERATOR', 'JAX_PLATFORMS', 'T5PT_SYSROOT', *backend_check.TPU_ENVIRONMENT)


class Machine:
  """A fake machine: its bin/nvidia-smi, its /dev and /sys (`root`), a stub venv."""

  def __init__(self, path):
    self.path = path
    self.bin, self.root, self.venv = path / 'bin', path / 'root', path / 'venv'
    for directory in (self.bin, self.root / 'dev', self.venv / 'bin'):
      directory.mkdir(parents=True)
    self.nvidia_smi('No devices were found', status=6)  # hides a real one on the host
    _executable(self.venv / 'bin' / 'python', STUB_PYTHON)
    self.env = {'T5PT_SYSROOT': str(self.root)}

  def nvidia_smi(self, output: str, status: int = 0) -> None:
    _executable(self.bin / 'nvidia-smi', f'#!/bin/sh\necho "{output}"\nexit {status}\n')

  def pci_device(self, name: str, vendor: str, device: str) -> None:
    directory = self.root / 'sys' / 'bus' / 'pci' / 'devices' / name
    directory.mkdir(parents=True)
    (directory / 'vendor').write_text(vendor + '\n')
    (directory / 'device').write_text(device + '\n')

  def environ(self) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and k != 'PYTHONPATH'}
    return {**env, 'PATH': f'{self.bin}:{env["PATH"]}', 'T5PT_VENV': str(self.venv), **self.env}

  def launch(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Runs launch.sh and returns it with `calls`: the stub python's (JAX_PLATFORMS, args)
    for this run."""
    log = self.venv / 'calls'
    log.unlink(missing_ok=True)
    result = subprocess.run(
      [LAUNCH, *args], env=self.environ(), cwd=self.path, capture_output=True, text=True
    )
    assert result.returncode == expect, result.stderr
    lines = log.read_text().splitlines() if log.exists() else []
    result.calls = [tuple(line.split('\t', 1)) for line in lines]
    return result

  def detect_in_python(self, monkeypatch) -> str:
    """backend_check's answer on this machine."""
    for name in CLEARED:
      monkeypatch.delenv(name, raising=False)
    environ = self.environ()
    for name in ('PATH', *self.env):
      monkeypatch.setenv(name, environ[name])
    return backend_check.detect_accelerator()


def _executable(path, text: str) -> None:
  path.write_text(text)
  path.chmod(0o755)


def _stamp(machine) -> str:
  """What $VENV/.accelerator says is installed (absent: cpu, as before it existed)."""
  path = machine.venv / '.accelerator'
  return path.read_text().strip() if path.exists() else 'cpu'


def _pip(result) -> list[str]:
  return [args for _, args in result.calls if args.startswith('-m pip')]


def _accelerator_pip(result) -> list[str]:
  """The pip calls beyond the requirements files."""
  return [args for args in _pip(result) if not re.search(r'-r \S+requirements|--upgrade pip', args)]


@pytest.fixture
def machine(tmp_path):
  return Machine(tmp_path)


# name -> (how to make the machine, what launch.sh installs there)
MACHINES = {
  'cpu': (lambda m: None, 'cpu'),
  'nvidia-smi lists a GPU': (lambda m: m.nvidia_smi(GPU_LIST), 'cuda12'),
  '/dev/nvidia0': (lambda m: (m.root / 'dev' / 'nvidia0').touch(), 'cuda12'),
  'TPU_ACCELERATOR_TYPE': (lambda m: m.env.update(TPU_ACCELERATOR_TYPE='v5litepod-8'), 'tpu'),
  'TPU_WORKER_HOSTNAMES': (lambda m: m.env.update(TPU_WORKER_HOSTNAMES='t1k-0,t1k-1'), 'tpu'),
  '/dev/accel0': (lambda m: (m.root / 'dev' / 'accel0').touch(), 'tpu'),
  'TPU v6e on PCI': (lambda m: m.pci_device('0000:00:04.0', '0x1ae0', '0x006f'), 'tpu'),
  # Google's virtual NIC (gVNIC) has Google's vendor id too; an NVIDIA PCI device alone
  # (no driver, so no /dev/nvidia0 nor nvidia-smi) is nothing JAX could use.
  'gVNIC and an NVIDIA PCI device': (
    lambda m: (
      m.pci_device('0000:00:05.0', '0x1ae0', '0x0042'),
      m.pci_device('0000:00:06.0', '0x10de', '0x2330'),
    ),
    'cpu',
  ),
}


@pytest.mark.parametrize('name', MACHINES)
def test_launch_installs_the_jax_build_for_the_machine(machine, monkeypatch, name):
  make, accelerator = MACHINES[name]
  make(machine)
  result = machine.launch('train', '--gin.X=1')
  assert [args for _, args in result.calls][-1] == '-P -m t5pt.train --gin.X=1'
  assert any('-r ' + os.path.join(REPO, 'requirements.txt') in args for args in _pip(result))
  spec = f'jax[{accelerator}]=={JAX_PIN}'
  want = (
    [] if accelerator == 'cpu' else [f'-m pip install --quiet -c {REPO}/requirements.txt {spec}']
  )
  assert _accelerator_pip(result) == want
  assert _stamp(machine) == (accelerator if accelerator == 'cpu' else f'{accelerator} {spec}')
  # Installed: the next run installs nothing.
  assert machine.launch('train').calls == [('', '-P -m t5pt.train')]
  # t5pt/runtime/backend_check.py sees the same machine.
  assert machine.detect_in_python(monkeypatch) == accelerator


def test_switching_the_choice_replaces_the_accelerator_part(machine):
  machine.nvidia_smi(GPU_LIST)
  assert _accelerator_pip(machine.launch('infer')) == [
    f'-m pip install --quiet -c {REPO}/requirements.txt jax[cuda12]=={JAX_PIN}'
  ]
  machine.env['T5PT_ACCELERATOR'] = 'tpu'
  result = machine.launch('infer')
  assert _pip(result) == [  # The requirements' stamp is current: only the accelerator part.
    '-m pip uninstall --quiet --yes jax-cuda12-plugin jax-cuda12-pjrt',
    f'-m pip install --quiet -c {REPO}/requirements.txt jax[tpu]=={JAX_PIN}',
  ]
  assert 'installing JAX for tpu' in result.stderr
  machine.env['T5PT_ACCELERATOR'] = 'cpu'  # on a GPU machine: the override wins
  assert _pip(machine.launch('infer')) == ['-m pip uninstall --quiet --yes libtpu']
  assert _stamp(machine) == 'cpu'
  assert _pip(machine.launch('infer')) == []
  del machine.env['T5PT_ACCELERATOR']  # detected again
  assert _accelerator_pip(machine.launch('infer')) == [
    f'-m pip install --quiet -c {REPO}/requirements.txt jax[cuda12]=={JAX_PIN}'
  ]


def test_tests_run_on_the_cpu_unless_t5pt_accelerator_says_otherwise(machine):
  machine.nvidia_smi(GPU_LIST)
  result = machine.launch('test', '-k', 'x')
  assert _accelerator_pip(result) == [f'-m pip install --quiet {_torch_pin()}']  # no CUDA
  assert any('-r ' + os.path.join(REPO, 'requirements-test.txt') in a for a in _pip(result))
  assert result.calls[-1] == ('', '-m pytest -k x')  # JAX_PLATFORMS left alone on a CPU venv
  machine.launch('train')  # installs the CUDA plugin
  result = machine.launch('test')
  # The test environment (a superset of the runtime one) is installed and the venv keeps its
  # CUDA plugin, so no pip call; the suite runs on the CPU.
  assert result.calls == [('cpu', '-m pytest')]
  machine.env['T5PT_ACCELERATOR'] = 'cuda12'
  assert machine.launch('test').calls == [('', '-m pytest')]
  machine.env['T5PT_ACCELERATOR'] = 'tpu'
  assert _pip(machine.launch('test'))[-1] == (
    f'-m pip install --quiet -c {REPO}/requirements-test.txt jax[tpu]=={JAX_PIN}'
  )


def test_the_suite_keeps_the_venv_build_for_the_runs_it_launches(machine):
  """Runs the suite starts through launch.sh (tests/test_new_user.py) neither install nor
  uninstall an accelerator build: `test` exports the venv's choice."""
  machine.env['T5PT_ACCELERATOR'] = 'cuda12'
  machine.launch('train')
  del machine.env['T5PT_ACCELERATOR']
  # The stub python, run as pytest, runs launch.sh as a test would (no GPU here).
  _executable(
    machine.venv / 'bin' / 'python',
    STUB_PYTHON + f'if [[ "$1 $2" == "-m pytest" ]]; then exec {LAUNCH} train --nested; fi\n',
  )
  result = machine.launch('test')
  assert _accelerator_pip(result) == [f'-m pip install --quiet {_torch_pin()}']
  runs = [call for call in result.calls if not call[1].startswith('-m pip')]
  assert runs == [('cpu', '-m pytest'), ('cpu', '-P -m t5pt.train --nested')]
  assert _stamp(machine) == f'cuda12 jax[cuda12]=={JAX_PIN}'


@pytest.mark.parametrize('value', ['gpu', 'CUDA12', 'cuda', ' cpu'])
def test_a_bad_t5pt_accelerator_is_one_line_and_exit_2(machine, value):
  machine.env['T5PT_ACCELERATOR'] = value
  result = machine.launch('train', expect=2)
  assert result.calls == []  # nothing installed or run
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and 'T5PT_ACCELERATOR' in lines[0], result.stderr
  assert 'cpu, cuda12, tpu' in lines[0] and repr(value) in lines[0].replace('"', "'")


def test_an_unknown_command_installs_nothing(machine):
  result = machine.launch('trian', expect=2)
  assert result.calls == [] and result.stderr.startswith('usage: ./launch.sh')


def _torch_pin() -> str:
  return re.search(r'^torch==\S+$', open(os.path.join(REPO, 'requirements-test.txt')).read(), re.M)[
    0
  ]


# backend_check.warn_if_accelerator_unused


@pytest.fixture
def cpu_run(monkeypatch):
  """A run whose JAX chose the CPU, the accelerator choice unset; returns a setter for the
  hardware detect_accelerator reports."""
  for name in CLEARED:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(backend_check, '_installed', lambda distribution: False)

  def hardware(accelerator):
    monkeypatch.setattr(backend_check, 'detect_accelerator', lambda: accelerator)

  return hardware


def _warnings(capsys) -> list[str]:
  captured = capsys.readouterr()
  assert captured.out == ''
  return captured.err.splitlines()


@pytest.mark.parametrize('accelerator', ['cuda12', 'tpu'])
def test_warns_in_one_line_with_the_fix(cpu_run, capsys, accelerator):
  cpu_run(accelerator)
  backend_check.warn_if_accelerator_unused()
  (line,) = _warnings(capsys)
  assert line.startswith('t5pt: warning: this machine has ')
  assert f'T5PT_ACCELERATOR={accelerator} ./launch.sh' in line
  assert f'pip install "jax[{accelerator}]=={jax.__version__}"' in line


def test_warns_when_the_plugin_is_installed_but_did_not_start(cpu_run, capsys, monkeypatch):
  cpu_run('cuda12')
  monkeypatch.setattr(backend_check, '_installed', lambda d: d == 'jax-cuda12-plugin')
  backend_check.warn_if_accelerator_unused()
  (line,) = _warnings(capsys)
  assert 'jax-cuda12-plugin is installed but did not start' in line and 'T5PT_VERBOSE=1' in line


@pytest.mark.parametrize(
  'setting', [{'T5PT_ACCELERATOR': 'cpu'}, {'JAX_PLATFORMS': 'cpu'}, {'hardware': 'cpu'}]
)
def test_silent_when_the_cpu_is_chosen_or_nothing_else_is_there(
  cpu_run, capsys, monkeypatch, setting
):
  cpu_run(setting.pop('hardware', 'cuda12'))
  for name, value in setting.items():
    monkeypatch.setenv(name, value)
  backend_check.warn_if_accelerator_unused()
  assert _warnings(capsys) == []


def test_silent_and_no_hardware_probe_on_an_accelerator(cpu_run, capsys, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(backend_check, 'detect_accelerator', lambda: pytest.fail('probed'))
  backend_check.warn_if_accelerator_unused()
  assert _warnings(capsys) == []


def test_never_raises(cpu_run, capsys, monkeypatch):
  def broken():
    raise RuntimeError('no backend')

  monkeypatch.setattr(jax, 'default_backend', broken)
  backend_check.warn_if_accelerator_unused()
  assert _warnings(capsys) == []


@pytest.mark.parametrize('gpu', [False, True])
def test_the_real_check_in_a_fresh_process(machine, gpu):
  """No fakes but the hardware: real JAX (the CPU build) on a machine without and with a GPU."""
  if any(backend_check._installed(p) for p in backend_check.PLUGINS.values()):
    pytest.skip('an accelerator build of JAX is installed')
  if gpu:
    machine.nvidia_smi(GPU_LIST)
  code = 'from t5pt import backend_check; backend_check.warn_if_accelerator_unused()'
  result = subprocess.run(
    [sys.executable, '-c', code],
    env={**machine.environ(), 'PYTHONPATH': REPO},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0 and result.stdout == '', result.stderr
  if not gpu:
    assert result.stderr == ''
  else:
    (line,) = result.stderr.splitlines()
    assert line.startswith('t5pt: warning: this machine has an NVIDIA GPU but JAX runs on the CPU')
    assert f'pip install "jax[cuda12]=={JAX_PIN}"' in line
