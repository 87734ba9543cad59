"""Model-written Python run behind walls, never in t5pt's own process.

Each call starts a fresh interpreter (this venv's, isolated: `-I`) that, before it reads
the code, builds its own walls:

  a new session                  the whole process group is killed when the call ends
  a network namespace            no interface but a downed loopback (where the OS allows:
                                 root, or unprivileged user namespaces)
  an unprivileged user           when t5pt runs as root, the code runs as `nobody`
  resource limits                CPU seconds, address space, open files, processes, size
                                 of files written, no core dumps
  a fresh temporary directory    the working directory, removed afterwards
  a clean environment            PATH and LANG only: no credentials, no HOME

Then a second wall at the language level: the code is compiled by RestrictedPython (no
dunder attributes, no `exec`/`eval`/`open`), runs with pure builtins only, and may import
only a list of pure modules (math, statistics, itertools, ...). The parent enforces the
wall-clock time-out and the output cap, reading at most `output_bytes` before it kills
the group. A call returns what the code printed, or one line of error.

Sandbox() refuses to start, with a UserError, where the walls cannot be built (no POSIX
resource limits, or the probe finds the child not walled as configured).
"""

import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from t5pt.runtime.errors import UserError
from t5pt.tools import base

NOBODY = 65534
ALLOWED_MODULES = (
  'math',
  'cmath',
  'statistics',
  'fractions',
  'decimal',
  'itertools',
  'functools',
  'operator',
  'collections',
  'string',
  're',
  'json',
  'datetime',
  'random',
)


@dataclasses.dataclass(frozen=True)
class Walls:
  """The limits of one call. network_namespace: 'require' (refuse to start without one),
  'try' (use one where the OS allows) or 'off'."""

  cpu_seconds: int = 2
  wall_seconds: float = 5.0
  memory_bytes: int = 512 << 20
  open_files: int = 32
  processes: int = 32  # for the sandbox's user, all its calls together
  file_bytes: int = 1 << 20
  output_bytes: int = 8192
  network_namespace: str = 'try'
  # The language-level wall; off only to test that the OS walls hold on their own.
  restricted_python: bool = True


# The child's own code: trusted, runs before the model's code and walls it in.
_RUNNER = r'''
import ctypes, json, os, resource, sys
walls = json.loads(sys.argv[1])
# Everything the code may use is imported while files are still readable: once the walls
# stand, the interpreter (perhaps under a home directory) may not be.
import builtins, importlib, operator, socket
from RestrictedPython import compile_restricted, limited_builtins, safe_builtins
from RestrictedPython.Guards import full_write_guard, guarded_iter_unpack_sequence, safer_getattr
from RestrictedPython.PrintCollector import PrintCollector
for name in walls['modules']:
  importlib.import_module(name)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
netns = False
if walls['network_namespace'] != 'off':
  flags = CLONE_NEWNET if os.getuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
  netns = libc.unshare(flags) == 0
  if not netns and walls['network_namespace'] == 'require':
    sys.stderr.write('walls: no network namespace\n'); sys.exit(3)
if os.getuid() == 0:
  os.setgroups([]); os.setgid(walls['nobody']); os.setuid(walls['nobody'])
  if os.getuid() == 0 or os.geteuid() == 0:
    sys.stderr.write('walls: still root\n'); sys.exit(3)
for limit, value in (
  (resource.RLIMIT_AS, walls['memory_bytes']),
  (resource.RLIMIT_NOFILE, walls['open_files']),
  (resource.RLIMIT_NPROC, walls['processes']),
  (resource.RLIMIT_FSIZE, walls['file_bytes']),
  (resource.RLIMIT_CORE, 0),
):
  resource.setrlimit(limit, (value, value))
# SIGXCPU at the soft limit (the call's error says why), SIGKILL a second later.
resource.setrlimit(resource.RLIMIT_CPU, (walls['cpu_seconds'], walls['cpu_seconds'] + 1))
code = sys.stdin.read()
sys.stdin.close()
if walls.get('probe'):
  print(json.dumps({'uid': os.getuid(), 'netns': netns,
                    'interfaces': [n for _, n in socket.if_nameindex()],
                    'cpu': resource.getrlimit(resource.RLIMIT_CPU)[0]}))
  sys.exit(0)
allowed = set(walls['modules'])
def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
  if level or name not in allowed:
    raise ImportError(f'import of {name!r} is not allowed')
  return sys.modules[name]
inplace = {'+=': operator.iadd, '-=': operator.isub, '*=': operator.imul, '/=': operator.itruediv,
           '//=': operator.ifloordiv, '%=': operator.imod, '**=': operator.ipow,
           '<<=': operator.ilshift, '>>=': operator.irshift, '&=': operator.iand,
           '|=': operator.ior, '^=': operator.ixor}
pure = ('abs all any bin bool chr dict divmod enumerate filter float frozenset hex int '
        'isinstance len list map max min next oct ord pow range repr reversed round set '
        'sorted str sum tuple zip iter').split()
names = {**safe_builtins, **limited_builtins, **{n: getattr(builtins, n) for n in pure}}
names['__import__'] = guarded_import
env = {'__builtins__': names, '__name__': '__tool__', '_print_': PrintCollector,
       '_getattr_': safer_getattr, '_getitem_': operator.getitem, '_getiter_': iter,
       '_iter_unpack_sequence_': guarded_iter_unpack_sequence, '_write_': full_write_guard,
       '_inplacevar_': lambda op, x, y: inplace[op](x, y)}
if not walls['restricted_python']:
  env = {'__name__': '__tool__'}
try:
  exec(compile_restricted(code, '<tool>', 'exec') if walls['restricted_python'] else code, env)
except BaseException as e:
  message = ' '.join(str(e).split())
  sys.stdout.flush()
  sys.stderr.write((f'{type(e).__name__}: {message}' if message else type(e).__name__)[:300] + '\n')
  sys.exit(1)
if '_print' in env:
  sys.stdout.write(env['_print']())
'''


def _check_platform() -> None:
  if not sys.platform.startswith('linux'):
    raise UserError(
      f'The python tool needs Linux (namespaces and resource limits); this is {sys.platform}. '
      'Drop it from TOOLS.'
    )


class Sandbox:
  """Runs code in a walled child process; see the module docstring."""

  def __init__(self, walls: Walls = Walls(), setting: str = 'TOOLS'):
    _check_platform()
    self.walls = walls
    self._setting = setting
    probe = self._run('', probe=True)
    if probe.error:
      raise UserError(
        f'{setting}: the python tool cannot build its sandbox here ({probe.text}); drop it '
        'from TOOLS or run where processes can be limited.'
      )
    facts = json.loads(probe.text)
    if os.getuid() == 0 and facts['uid'] == 0:
      raise UserError(f'{setting}: the python tool could not leave root; drop it from TOOLS.')
    self.network_isolated = facts['netns'] and set(facts['interfaces']) <= {'lo'}
    if walls.network_namespace == 'require' and not self.network_isolated:
      raise UserError(
        f'{setting}: the python tool requires a network namespace and this machine gives '
        "none; set network_namespace='try' to rely on the language-level wall alone."
      )

  def run(self, code: str) -> 'Outcome':
    return self._run(code)

  def _run(self, code: str, probe: bool = False) -> 'Outcome':
    walls = {
      **dataclasses.asdict(self.walls),
      'nobody': NOBODY,
      'modules': ALLOWED_MODULES,
      'probe': probe,
    }
    workdir = tempfile.mkdtemp(prefix='t5pt-sandbox-')
    try:
      if os.getuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
      process = subprocess.Popen(
        [sys.executable, '-I', '-c', _RUNNER, json.dumps(walls)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env={'PATH': '/usr/bin:/bin', 'LANG': 'C.UTF-8'},
        start_new_session=True,
      )
      try:
        return self._collect(process, code)
      finally:
        _kill_group(process)
    finally:
      shutil.rmtree(workdir, ignore_errors=True)

  def _collect(self, process: subprocess.Popen, code: str) -> 'Outcome':
    """Feeds `code`, then reads at most output_bytes (+1) of stdout until the process ends
    or the wall-clock limit passes."""
    try:
      process.stdin.write(code.encode('utf-8', 'replace'))
      process.stdin.close()
    except BrokenPipeError:
      pass
    deadline = time.monotonic() + self.walls.wall_seconds
    out, cap = bytearray(), self.walls.output_bytes
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        return Outcome(f'timed out after {self.walls.wall_seconds:g} s', 'timeout')
      ready, _, _ = select.select([process.stdout], [], [], min(left, 0.1))
      if ready:
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
          break
        out += chunk
        if len(out) > cap:
          return Outcome(f'output over {cap} bytes', 'too long')
      elif process.poll() is not None and not _readable(process.stdout):
        break
    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    err = process.stderr.read(2000).decode('utf-8', 'replace').strip()
    if process.returncode == 0:
      return Outcome(out.decode('utf-8', 'replace'), None)
    return Outcome(_describe_failure(process.returncode, err), 'error')


@dataclasses.dataclass(frozen=True)
class Outcome:
  text: str
  error: Optional[str]  # None, 'error', 'timeout', 'too long'


def _readable(stream) -> bool:
  return bool(select.select([stream], [], [], 0)[0])


def _describe_failure(returncode: int, stderr: str) -> str:
  if returncode < 0:
    name = signal.Signals(-returncode).name
    reasons = {'SIGXCPU': 'CPU time limit', 'SIGKILL': 'killed', 'SIGXFSZ': 'file size limit'}
    return f'stopped by {name} ({reasons.get(name, "signal")})'
  line = stderr.splitlines()[-1] if stderr else f'exit status {returncode}'
  return line[:300]


def _kill_group(process: subprocess.Popen) -> None:
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  process.wait()


class Python(base.Tool):
  """The `python` tool: runs its argument as Python in a Sandbox; the result is what the
  code printed (stripped), or the error line."""

  def __init__(self, walls: Walls = Walls(), setting: str = 'TOOLS'):
    self.sandbox = Sandbox(walls, setting)
    # run_call's time-out backs up the sandbox's own, which always comes first.
    self.limits = base.Limits(timeout_s=walls.wall_seconds + 5, max_result_chars=walls.output_bytes)

  def __call__(self, argument: str) -> str:
    outcome = self.sandbox.run(argument)
    if outcome.error:
      raise base.ToolError(outcome.text)
    return outcome.text.strip()
