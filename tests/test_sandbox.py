"""The python tool's sandbox against hostile model output: every call below ends as a
bounded result within the limits, with nothing on the host touched."""

import dataclasses
import os
import socket
import threading
import time

import pytest

from t5pt.tools import base
from t5pt.tools import sandbox

# The memory limit carries this process's id, so that the sandboxes of this test process
# can be told (on their command lines) from those of other test workers.
WALLS = sandbox.Walls(cpu_seconds=1, wall_seconds=3.0, memory_bytes=(256 << 20) + os.getpid())


@pytest.fixture(scope='module')
def python_tool():
  return sandbox.Python(WALLS)


@pytest.fixture
def host(tmp_path, monkeypatch):
  """A secret in the environment, a file the code must not read, a place it must not write."""
  monkeypatch.setenv('T5PT_TEST_SECRET', 'hunter2-credential')
  secret = tmp_path / 'secret.txt'
  secret.write_text('hunter2-file')
  return {'secret': str(secret), 'forbidden': str(tmp_path / 'written.txt')}


def test_plain_code_runs_and_prints(python_tool):
  assert python_tool('import math\nprint(round(math.sqrt(2), 3))') == '1.414'
  assert python_tool('total = 0\nfor i in range(5):\n  total += i\nprint(total)') == '10'
  assert python_tool('from fractions import Fraction\nprint(Fraction(1, 3) * 3)') == '1'


HOSTILE = {
  'os.system': "import os\nos.system('touch {forbidden}')",
  'subprocess': "import subprocess\nsubprocess.run(['touch', '{forbidden}'])",
  'read /etc/passwd': "print(open('/etc/passwd').read())",
  'read a host file': "print(open('{secret}').read())",
  'write outside': "open('{forbidden}', 'w').write('x')",
  'io.open': "import io\nio.open('{forbidden}', 'w')",
  'pathlib': "import pathlib\npathlib.Path('{forbidden}').write_text('x')",
  'home listing': "import os\nprint(os.listdir(os.path.expanduser('~')))",
  'environment': "import os\nprint(os.environ)",
  'environment via sys': "import sys\nprint(sys.modules['os'].environ)",
  'socket': "import socket\nsocket.create_connection(('127.0.0.1', {port}))",
  'urllib': "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}')",
  'fork bomb': "import os\nwhile True:\n  os.fork()",
  'infinite loop': 'while True:\n  pass',
  'busy arithmetic': 'x = 1\nwhile True:\n  x = (x * 7) % 1000003',
  '10 GB allocation': 'x = bytearray(10 * 1024**3)',
  'growing list': 'x = []\nwhile True:\n  x.append([0] * 100000)',
  'gigabytes of output': "while True:\n  print('y' * 100000)",
  'huge power': 'print(9**9**9)',
  'huge string': "print('a' * 10**10)",
  'deep recursion': 'def f(n):\n  return f(n + 1)\nf(0)',
  'ctypes': "import ctypes\nctypes.CDLL(None).system(b'touch {forbidden}')",
  '__import__': "__import__('os').system('touch {forbidden}')",
  '__builtins__': "__builtins__['open']('{forbidden}', 'w')",
  '__subclasses__ walk': "print(().__class__.__bases__[0].__subclasses__())",
  'getattr dunder': "getattr((), '__class__')",
  'format string escape': "print('{{0.__class__}}'.format(1))",
  'generator frame': "g = (i for i in [1])\nprint(g.gi_frame.f_globals)",
  'signal handler': "import signal\nsignal.signal(signal.SIGTERM, lambda *a: None)",
  'exec': "exec('import os')",
  'eval': "eval('1+1')",
  'compile': "compile('1', 'x', 'eval')",
  'globals': 'print(globals())',
  'importlib': "import importlib\nimportlib.import_module('os')",
  'relative import': 'from . import x',
  'sys.exit': "import sys\nsys.exit(0)",
  're catastrophic backtracking': "import re\nre.match('(a+)+$', 'a' * 40 + 'b')",
}


@pytest.fixture(scope='module')
def listener():
  """A local TCP server: a connection from the sandbox would show up here."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen()
  server.settimeout(0.2)
  accepted = []
  stop = threading.Event()

  def serve():
    while not stop.is_set():
      try:
        accepted.append(server.accept()[0])
      except OSError:
        pass

  thread = threading.Thread(target=serve, daemon=True)
  thread.start()
  yield server.getsockname()[1], accepted
  stop.set()
  thread.join()
  server.close()


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_hostile_code_is_contained(python_tool, host, listener, name):
  port, accepted = listener
  code = HOSTILE[name].format(port=port, **host)
  start = time.monotonic()
  result = base.run_call({'Python': python_tool}, 'Python', code)
  assert time.monotonic() - start < WALLS.wall_seconds + 2
  assert len(result.text) <= WALLS.output_bytes + 100
  assert result.error in ('error', 'timeout', 'too long'), result
  assert result.text.startswith('error: '), result
  assert 'hunter2' not in result.text and 'root:' not in result.text
  assert not os.path.exists(host['forbidden'])
  assert not accepted


# The same kinds of attack with the language wall off: the OS walls alone hold.
OS_ONLY = {
  'fork bomb': "import os\nwhile True:\n  os.fork()",
  'socket': "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
  'write outside': "open('{forbidden}', 'w').write('x')",
  'memory': 'x = bytearray(10 * 1024**3)',
  'cpu': 'while True:\n  pass',
  'big file': "open('big', 'wb').write(b'0' * (64 << 20))",
  'many files': "fs = [open(f'f{{i}}', 'w') for i in range(1000)]",
  'environment': "import os\nprint(sorted(os.environ))",
}


# What each OS-only attack meets (any of these texts).
OS_ONLY_MEETS = {
  'fork bomb': ('BlockingIOError', 'timed out', 'CPU time limit'),
  'socket': ('Network is unreachable',),
  'write outside': ('Permission denied',),
  'memory': ('MemoryError',),
  'cpu': ('CPU time limit',),
  'big file': ('File too large',),
  'many files': ('Too many open files',),
}


@pytest.mark.parametrize('name', sorted(OS_ONLY))
def test_the_os_walls_hold_without_the_language_wall(host, listener, name):
  port, accepted = listener
  tool = sandbox.Python(dataclasses.replace(WALLS, restricted_python=False))
  if name == 'socket' and not tool.sandbox.network_isolated:
    pytest.skip('no network namespace on this machine: the language wall alone stops sockets')
  if name == 'write outside' and os.getuid() != 0:
    pytest.skip('run as a regular user, the sandbox writes with that user\'s rights')
  result = base.run_call({'Python': tool}, 'Python', OS_ONLY[name].format(port=port, **host))
  if name == 'environment':  # runs, but sees no credentials
    assert result.error is None and result.text == "['LANG', 'PATH']", result
  else:
    assert result.error and any(m in result.text for m in OS_ONLY_MEETS[name]), result
  assert not os.path.exists(host['forbidden']) and not accepted
  assert _sandbox_processes() == 0


def test_no_sandbox_process_outlives_its_call(python_tool):
  base.run_call({'Python': python_tool}, 'Python', 'while True:\n  pass')
  assert _sandbox_processes() == 0


def _sandbox_processes() -> int:
  """Processes running this test process's sandboxes (the runner's code and WALLS' memory
  limit are on their command line)."""
  mine = f'"memory_bytes": {WALLS.memory_bytes}'.encode()
  count = 0
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        line = f.read()
    except OSError:
      continue
    count += b'walls = json.loads' in line and mine in line
  return count


def test_the_probe_reports_the_walls():
  tool = sandbox.Sandbox(WALLS)
  assert tool.network_isolated in (True, False)
  if os.getuid() == 0:
    assert tool.network_isolated  # root can always make a network namespace


def test_refuses_to_start_where_a_required_wall_is_missing(monkeypatch):
  monkeypatch.setattr(sandbox.sys, 'platform', 'darwin')
  with pytest.raises(sandbox.UserError, match='needs Linux'):
    sandbox.Python(WALLS)
