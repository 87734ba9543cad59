"""What library output reaches the terminal when t5pt runs as a program.

At default verbosity a t5pt command prints only its own lines, progress bars and warnings
about the run (as `t5pt: warning: ...`). Everything the libraries underneath log is
dropped:

  * the native (C++) logs of TensorFlow and of XLA inside jaxlib ("Could not find cuda
    drivers", "failed call to cuInit", oneDNN and CPU-feature notices, cuDNN/cuBLAS
    factory registration): TF_CPP_MIN_LOG_LEVEL=3, which both read when they are loaded,
    so it is set before either is imported; and stderr is pointed at a buffer while
    TensorFlow is imported, because a few of its shared objects log from static
    initialisers, before they read TF_CPP_MIN_LOG_LEVEL (the buffer is printed if the
    import fails);
  * Python log records of libraries (seqio, TensorFlow, JAX, orbax, ...) below ERROR: a
    filter on absl's handler, put on the root logger at once rather than in app.run, so
    that records logged while modules load are filtered too; t5pt's own records (and
    those of the user's task modules) pass, as `t5pt: warning: ...`;
  * Python warnings (`warnings.warn`) attributed to library code;
  * in a run of several processes (--multiprocess_gpu or JAX_COORDINATOR_ADDRESS), the
    line gloo, JAX's CPU collectives, prints with std::cout whenever it connects the
    processes ("[Gloo] Rank 0 is connected to 1 peer ranks. ..."), at the first
    collective and for every new group of devices: file descriptor 1 is a pipe whose
    reader forwards every other byte to the real stdout as it comes (NativeStdoutFilter).

`--verbosity=N` (absl's flag; 0 = INFO) or T5PT_VERBOSE=1 in the environment turns all
of this off: every library log comes back, unfiltered.

t5pt/__init__.py calls quiet_cli() when Python is starting a t5pt module as a program
(`python -m t5pt.train`, a `t5pt-*` console script): the package is imported before the
module's own imports, so that is early enough for every entry point. Other programs
(tasks/show.py) call it first thing.
"""

import atexit
import importlib
import logging
import os
import sys
import sysconfig
import tempfile
import threading
import warnings
from typing import Optional, Sequence

from absl import logging as absl_logging

VERBOSE_ENV = 'T5PT_VERBOSE'
# Set before TensorFlow or jaxlib is loaded, over any inherited value: a parent process that
# imported jax has set TF_CPP_MIN_LOG_LEVEL=1 (jax/__init__.py), which shows native errors
# such as 'failed call to cuInit'. T5PT_VERBOSE / --verbosity are the way to see them.
NATIVE_LOG_ENV = {'TF_CPP_MIN_LOG_LEVEL': '3'}
_VERBOSITY_FLAGS = ('--verbosity', '-v', '--v')

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # t5pt/
# t5pt's own code: this package and the bundled task registries.
OWN_DIRS = (_PACKAGE_DIR, os.path.join(os.path.dirname(_PACKAGE_DIR), 'tasks'))

# warnings.filterwarnings matches `module` against the name of the module a warning is
# attributed to; this matches every module outside t5pt, tasks and the program itself.
_NOT_OWN_MODULE = r'(?!(t5pt|tasks|__main__)(\.|$))'

_quiet = False


def verbose(argv: Optional[Sequence[str]] = None) -> bool:
  """True when the user asked for library logs: T5PT_VERBOSE set (not 0/false/no/off) or
  absl's --verbosity (-v) on the command line."""
  if os.environ.get(VERBOSE_ENV, '').strip().lower() not in ('', '0', 'false', 'no', 'off'):
    return True
  for arg in sys.argv[1:] if argv is None else argv:
    if arg == '--':
      break
    if arg.split('=', 1)[0] in _VERBOSITY_FLAGS:
      return True
  return False


def started_as_program() -> bool:
  """True while Python starts a t5pt module as a program: `python -m t5pt.X` (Python
  imports the package with sys.argv[0] == '-m' while it locates X), a `t5pt-*` console
  script, or a file of this package run directly."""
  program = sys.argv[0] if sys.argv else ''
  return (
    program == '-m'
    or os.path.basename(program).startswith('t5pt-')
    or os.path.abspath(program).startswith(_PACKAGE_DIR + os.sep)
  )


def _library_dirs() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  return tuple(
    os.path.abspath(paths[key]) + os.sep
    for key in ('stdlib', 'platstdlib', 'purelib', 'platlib')
    if key in paths
  )


_LIBRARY_DIRS = _library_dirs()


def is_own_code(path: str) -> bool:
  """Whether a source file is t5pt's (or the user's, e.g. a MIXTURE_OR_TASK_MODULE) rather
  than an installed library's or the standard library's."""
  path = os.path.abspath(path)
  if any(path.startswith(d + os.sep) for d in OWN_DIRS):
    return True
  return not (
    path.startswith(_LIBRARY_DIRS)
    or 'site-packages' in path
    or 'dist-packages' in path
    or path.startswith('<')
  )


class OwnRecordsOnly(logging.Filter):
  """Passes t5pt's records and library records at ERROR or above."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or is_own_code(record.pathname)


class ShortOwnFormatter(logging.Formatter):
  """t5pt's records as `t5pt: warning: message`; others as `fallback` formats them."""

  def __init__(self, fallback: logging.Formatter):
    super().__init__()
    self._fallback = fallback

  def format(self, record: logging.LogRecord) -> str:
    if not is_own_code(record.pathname):
      return self._fallback.format(record)
    message = f't5pt: {record.levelname.lower()}: {record.getMessage()}'
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    return message


def quiet_cli(argv: Optional[Sequence[str]] = None) -> None:
  """Keeps library logs off the terminal for the rest of this process (see the module
  docstring), unless verbose(argv). Call it before TensorFlow or JAX is imported; later
  calls do nothing."""
  global _quiet
  if _quiet or verbose(argv):
    return
  _quiet = True
  for name, value in NATIVE_LOG_ENV.items():
    os.environ[name] = value
  # On the root logger now rather than in app.run (TensorFlow, finding the root logger
  # configured, then adds no handler of its own).
  absl_logging.use_absl_handler()
  handler = absl_logging.get_absl_handler()
  handler.addFilter(OwnRecordsOnly())
  handler.setFormatter(ShortOwnFormatter(handler.python_handler.formatter))
  warnings.filterwarnings('ignore', module=_NOT_OWN_MODULE)
  if several_processes(argv):
    drop_gloo_lines()
  _import_tensorflow_quietly()


_stdout_filter = None


def drop_gloo_lines() -> None:
  """Keeps gloo's connection lines off stdout from now on (once; only under quiet_cli).
  quiet_cli calls it when the command line asks for several processes; a caller that
  finds several processes otherwise (a cluster's environment) calls it before JAX
  distributed starts."""
  global _stdout_filter
  if _quiet and _stdout_filter is None:
    _stdout_filter = NativeStdoutFilter(GLOO_LINE)
    _stdout_filter.start()


GLOO_LINE = b'[Gloo] '  # How every line gloo prints to stdout starts.
_FALSE = ('0', 'false', 'no', 'off')


def several_processes(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether this command asks to start JAX distributed (distributed.initialize):
  --multiprocess_gpu on the command line or JAX_COORDINATOR_ADDRESS in the environment."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for arg in sys.argv[1:] if argv is None else argv:
    if arg == '--':
      break
    name, _, value = arg.partition('=')
    if name == '--multiprocess_gpu' and value.strip().lower() not in _FALSE:
      return True
  return False


class NativeStdoutFilter:
  """Drops the lines starting with `prefix` that anything in this process, C++ included,
  writes to file descriptor 1: fd 1 becomes a pipe, and a thread forwards the rest to the
  original stdout as it arrives (a partial line at once, unless it may still become a
  dropped line). At exit fd 1 is restored and what is left in the pipe is forwarded."""

  def __init__(self, prefix: bytes):
    self._prefix = prefix
    self._pending = b''
    self._line_start = True
    self._original = None
    self._thread = None

  def start(self) -> None:
    sys.stdout.flush()
    read, write = os.pipe()
    self._original = os.dup(1)
    os.dup2(write, 1)
    os.close(write)
    self._thread = threading.Thread(target=self._forward, args=(read,), daemon=True)
    self._thread.start()
    atexit.register(self.stop)

  def stop(self) -> None:
    """Restores fd 1 (closing the pipe's last writer here) and waits for the forwarder."""
    try:
      sys.stdout.flush()
    except (OSError, ValueError):
      pass
    os.dup2(self._original, 1)
    self._thread.join(timeout=5)  # A child process still holding the pipe: give up.

  def _forward(self, read: int) -> None:
    with os.fdopen(read, 'rb', buffering=0) as pipe:
      while chunk := pipe.read(1 << 16):
        self._write(self.filter(chunk))
    self._write(self._pending)

  def _write(self, data: bytes) -> None:
    while data:
      data = data[os.write(self._original, data) :]

  def filter(self, chunk: bytes) -> bytes:
    """What of `chunk` (after what is pending) goes out now."""
    pending, out = self._pending + chunk, []
    while pending:
      if self._line_start and self._prefix.startswith(pending[: len(self._prefix)]):
        end = pending.find(b'\n')
        if len(pending) < len(self._prefix) or end < 0:
          break  # Not yet known to be, or not yet the whole of, a dropped line.
        pending = pending[end + 1 :]
        continue
      end = pending.find(b'\n')
      line, pending = (pending, b'') if end < 0 else (pending[: end + 1], pending[end + 1 :])
      out.append(line)
      self._line_start = end >= 0
    self._pending = pending
    return b''.join(out)


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with file descriptor 2 pointed at a temporary file, replayed to
  stderr only if the import fails."""
  if 'tensorflow' in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module('tensorflow')
    except BaseException:
      sys.stderr.flush()
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors='replace'))
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
