"""The one filesystem layer: every file t5pt reads or writes, local or `gs://` alike.

Built on etils.epath because orbax writes checkpoints through it: a run's config, metrics,
TensorBoard events, checkpoints, infer/eval outputs and exports then all reach storage
through one path type and one backend, and tensorstore (orbax's array store) reads and
writes gs:// itself. tf.io.gfile was the other candidate; it would tie the exporters and
checkpoint code to TensorFlow, orbax would still go through epath, and its GCS endpoints
are compiled in, so no emulator can stand in for GCS in tests.

For gs:// epath would pick TensorFlow's GCS filesystem whenever TensorFlow is installed
(it is, for seqio). t5pt makes it use gcsfs instead (EPATH_USE_TF=false, unless the user
set it): one client for t5pt and orbax, and the one the tests run against a GCS emulator.
Reading task data (seqio, TFDS) still goes through TensorFlow, which has its own GCS client.

Object stores have no atomic rename, but an object appears only once its upload is
complete; so `write_*` go straight to the object there, and through a temporary file and
a rename on local disk. A directory is made atomic by writing its marker file last.
"""

import contextlib
import json
import os
import socket
import threading
import urllib.parse
import uuid
from typing import Callable, Iterator, Optional, Sequence, Union

from etils import epath

from t5pt.runtime.errors import UserError

# Read by etils at the first gs:// operation of the process, so importing t5pt.runtime.fs is early
# enough.
os.environ.setdefault('EPATH_USE_TF', 'false')

PathLike = Union[str, os.PathLike]


def path(p: PathLike) -> epath.Path:
  """`p` as an epath; a relative local path is resolved against the working directory
  now (orbax and tensorstore accept only absolute ones). The first gs:// path of the
  process checks that GCS can be reached (check_gcs_reachable)."""
  check_gcs_reachable(p)
  return epath.Path(absolute(p))


# The first touch of a gs:// path probes the endpoint with a short timeout: without it, an
# unreachable GCS (no network, a DNS failure, an emulator that is not running) ends, after
# about a minute of gcsfs retries, in an aiohttp traceback.
GCS_PROBE_TIMEOUT_ENV = 'T5PT_GCS_PROBE_TIMEOUT'
GCS_PROBE_TIMEOUT_S = 5.0
_gcs_reachable: set = set()  # endpoints that accepted a connection in this process


def gcs_endpoint() -> str:
  """The URL gcsfs sends gs:// requests to, as gcsfs chooses it: STORAGE_EMULATOR_HOST
  (http:// unless it names a scheme) if set, else https://storage.googleapis.com (or the
  GOOGLE_CLOUD_UNIVERSE_DOMAIN's)."""
  emulator = os.environ.get('STORAGE_EMULATOR_HOST', '')
  if emulator not in ('', 'default'):
    return emulator if emulator.startswith(('http://', 'https://')) else f'http://{emulator}'
  return f'https://storage.{os.environ.get("GOOGLE_CLOUD_UNIVERSE_DOMAIN", "googleapis.com")}'


def check_gcs_reachable(p: PathLike, setting: Optional[str] = None) -> None:
  """For a gs:// `p`: raises a UserError (one line: the bucket, the endpoint, the
  credentials gcsfs would use, the fix) unless the endpoint accepts a TCP connection within
  T5PT_GCS_PROBE_TIMEOUT seconds (default 5; 0 turns the probe off). Probed once per
  endpoint and process; credentials and permissions show at the first real request.
  `setting` (e.g. 'MODEL_DIR') starts the message when the caller knows it."""
  p = os.fspath(p)
  if not p.startswith('gs://'):
    return
  endpoint = gcs_endpoint()
  if endpoint in _gcs_reachable:
    return
  timeout = _gcs_probe_timeout()
  if not timeout:
    return
  problem = _connection_problem(endpoint, timeout)
  if problem is None:
    _gcs_reachable.add(endpoint)
    return
  bucket = 'gs://' + p[len('gs://') :].split('/')[0]
  if os.environ.get('STORAGE_EMULATOR_HOST', '') not in ('', 'default'):
    where = f'the emulator at STORAGE_EMULATOR_HOST={os.environ["STORAGE_EMULATOR_HOST"]}'
    fix = f'start the emulator at {endpoint}, or unset STORAGE_EMULATOR_HOST to use GCS'
  else:
    where = endpoint
    fix = (
      f'check that this machine reaches {urllib.parse.urlsplit(endpoint).hostname} (DNS, '
      'firewall; gcsfs does not use HTTP(S)_PROXY), or use a local path'
    )
  credentials, found = _gcs_credentials()
  if not found:
    fix += (
      '; a private bucket also needs credentials (`gcloud auth application-default login` '
      'or GOOGLE_APPLICATION_CREDENTIALS)'
    )
  if problem.startswith('no answer'):
    fix += f', or raise {GCS_PROBE_TIMEOUT_ENV} (seconds) on a slow network'
  named = f'{setting}={p!r}: ' if setting else ''
  raise UserError(
    f'{named}{bucket} is unreachable: {where} ({problem}); credentials: {credentials}. '
    f'To fix: {fix}.'
  )


def _gcs_probe_timeout() -> float:
  value = os.environ.get(GCS_PROBE_TIMEOUT_ENV, '')
  if not value:
    return GCS_PROBE_TIMEOUT_S
  try:
    timeout = float(value)
  except ValueError:
    timeout = -1.0
  if not 0 <= timeout < float('inf'):
    raise UserError(
      f'{GCS_PROBE_TIMEOUT_ENV}={value!r} is not a number of seconds >= 0 (0 turns the gs:// '
      'reachability probe off).'
    )
  return timeout


def _connection_problem(endpoint: str, timeout: float) -> str | None:
  """None if `endpoint` accepts a TCP connection within `timeout` seconds (name lookup
  included: it runs in a thread, as getaddrinfo has no timeout), else what went wrong."""
  url = urllib.parse.urlsplit(endpoint)
  try:
    host, port = url.hostname, url.port or (443 if url.scheme == 'https' else 80)
  except ValueError as e:
    return f'not a URL with a valid port: {e}'
  if not host:
    return 'no host name in the URL'
  outcome: list = []

  def attempt():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      outcome.append(None)
    except socket.gaierror as e:
      outcome.append(f'{host} does not resolve: {e.strerror or e}')
    except ConnectionRefusedError:
      outcome.append('connection refused')
    except TimeoutError:
      outcome.append(f'no answer within {timeout:g} s')
    except OSError as e:
      outcome.append(f'{e.strerror or e}')

  thread = threading.Thread(target=attempt, name='t5pt-gcs-probe', daemon=True)
  thread.start()
  thread.join(timeout)
  return outcome[0] if outcome else f'no answer within {timeout:g} s'


def _gcs_credentials() -> tuple[str, bool]:
  """(what gcsfs would authenticate with, in its order of trying; whether any were found)."""
  key = os.environ.get('GOOGLE_APPLICATION_CREDENTIALS')
  if key:
    missing = '' if os.path.isfile(key) else ' (no such file)'
    return f'GOOGLE_APPLICATION_CREDENTIALS={key}{missing}', not missing
  config = os.environ.get('CLOUDSDK_CONFIG') or os.path.expanduser('~/.config/gcloud')
  adc = os.path.join(config, 'application_default_credentials.json')
  if os.path.isfile(adc):
    return f'gcloud default ({adc})', True
  then = 'anonymous' if os.environ.get('NO_GCE_CHECK') == 'true' else 'GCE metadata, then anonymous'
  return f'none found (GOOGLE_APPLICATION_CREDENTIALS unset, no {adc}), so {then}', False


def is_remote(p: PathLike) -> bool:
  return '://' in os.fspath(p)


def absolute(p: PathLike) -> str:
  """`p` as recorded in run metadata: URIs unchanged, local paths made absolute."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def join(*parts: PathLike) -> str:
  return os.fspath(epath.Path(*parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def check_output_dir(p: PathLike, setting: str) -> None:
  """Raises a UserError unless `p` is, or can be made, a directory this process may write;
  `setting` names it as the user set it (e.g. 'MODEL_DIR'). A remote bucket's permissions
  show only at the first write."""
  check_gcs_reachable(p, setting)
  if exists(p) and not isdir(p):
    raise UserError(
      f'{setting}={os.fspath(p)!r} is a file, not a directory; choose another {setting}.'
    )
  if is_remote(p):
    return
  nearest = path(p)
  while not nearest.exists():
    nearest = nearest.parent
  if not nearest.is_dir():
    raise UserError(
      f'{setting}={os.fspath(p)!r} cannot be created: {nearest} is a file, not a directory.'
    )
  if not os.access(nearest, os.W_OK | os.X_OK):
    raise UserError(
      f'{setting}={os.fspath(p)!r} cannot be written: {nearest} is read-only (a read-only '
      f'file system, or no write permission for this user); choose another {setting}.'
    )


def read_text(p: PathLike) -> str:
  """The UTF-8 text of `p`, exactly as stored (no newline translation); bytes that are
  not UTF-8 are a UserError naming the file and line."""
  data = read_bytes(p)
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data.count(b'\n', 0, e.start) + 1
    column = e.start - (data.rfind(b'\n', 0, e.start) + 1) + 1
    raise UserError(
      f'{os.fspath(p)}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column '
      f'{column}); save the file as UTF-8.'
    ) from e


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_json(p: PathLike):
  """The JSON value in `p`; malformed JSON is a UserError naming the file and line."""
  try:
    return json.loads(read_text(p))
  except json.JSONDecodeError as e:
    raise UserError(f'{os.fspath(p)}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}).') from e


def glob(directory: PathLike, pattern: str) -> list[str]:
  """Sorted paths in `directory` matching `pattern` (empty if it does not exist)."""
  d = path(directory)
  return sorted(os.fspath(m) for m in d.glob(pattern)) if d.exists() else []


def write_text(p: PathLike, text: str) -> None:
  """Writes `text` to `p` so that a reader never sees a partial file."""
  write_bytes(p, text.encode())


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` so that a reader never sees a partial file."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    target.write_bytes(data)
    return
  tmp = target.parent / f'.{target.name}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    tmp.write_bytes(data)
    tmp.replace(target)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_json(p: PathLike, value, indent: int = 2, sort_keys: bool = True) -> None:
  """Writes `value` as JSON to `p`, atomically as `write_text`. NaN and Inf are not JSON:
  a non-finite number raises ValueError (naming `p`) instead of writing a file other
  readers reject; a caller whose values may legitimately be non-finite writes None."""
  try:
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False)
  except ValueError as e:
    raise ValueError(f'{os.fspath(p)}: {e}.') from e
  write_text(p, text)


def remove(p: PathLike) -> None:
  """Deletes a file or a directory tree; nothing if `p` does not exist. Only for what
  t5pt wrote: an output the user named is replaced after `check_replaceable`."""
  target = path(p)
  if target.is_dir():
    target.rmtree()
  elif target.exists():
    target.unlink()


def check_replaceable(
  p: PathLike,
  setting: str,
  overwrite: bool,
  foreign: Callable[[str], Sequence[str]],
  what: str,
) -> None:
  """Raises a UserError unless `p` may become the output folder `setting` names: it
  can be created (check_output_dir), or it is a folder t5pt wrote and `overwrite` is set.
  `foreign(p)` lists what in an existing `p` t5pt did not write (an empty folder holds
  nothing of the user's); such a folder is never replaced, with or without --overwrite.
  `what` describes the folders t5pt replaces, e.g. 'an adapter t5pt.export wrote'."""
  check_output_dir(p, setting)
  if not exists(p):
    return
  name = f'{setting}={os.fspath(p)!r}'
  strangers = list(foreign(os.fspath(p)))
  if strangers:
    shown = ', '.join(repr(s) for s in strangers[:3])
    more = f' and {len(strangers) - 3} more' if len(strangers) > 3 else ''
    raise UserError(
      f'{name} already exists and holds {shown}{more}: it is not {what}, and t5pt replaces '
      f'nothing else, with or without --overwrite. Choose a new {setting}.'
    )
  if not overwrite:
    raise UserError(
      f'{name} already exists ({what}); choose a new {setting}, or pass --overwrite to replace it.'
    )


def entries(directory: PathLike) -> list[str]:
  """The sorted names directly inside `directory` (hidden ones included)."""
  return sorted(child.name for child in path(directory).iterdir())


@contextlib.contextmanager
def atomic_directory(
  p: PathLike, marker: str, check_replace: Optional[Callable[[str], None]] = None
) -> Iterator[str]:
  """Yields a scratch directory that becomes `p` once the block completes.

  Local: the scratch directory is renamed into place; a `p` that exists by then is
  replaced only if `check_replace(p)` (e.g. a check_replaceable) raises nothing (without
  it, an existing `p` is refused). Object stores cannot rename a directory atomically, so
  there the files are written into `p` itself and the block must write `marker` (a file
  name inside the directory) last: a reader treats the directory as complete only once the
  marker exists; the caller clears an existing `p` first. On failure everything written
  is removed.
  """
  target = path(p)
  if is_remote(p):
    try:
      yield os.fspath(target)
    except BaseException:
      remove(target)
      raise
    if not (target / marker).exists():
      raise RuntimeError(f'{target}: the block did not write its marker {marker}.')
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  scratch = target.parent / f'.{target.name}.partial-{uuid.uuid4().hex[:8]}'
  scratch.mkdir()
  try:
    yield os.fspath(scratch)
    if target.exists():  # Checked again: the block may have run for hours.
      if check_replace is None:
        raise UserError(f'{os.fspath(p)!r} already exists; choose a new output path.')
      check_replace(os.fspath(p))
  except BaseException:
    remove(scratch)
    raise
  remove(target)
  scratch.rename(target)
