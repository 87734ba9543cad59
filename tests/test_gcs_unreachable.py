"""A gs:// path when GCS cannot be reached: the first touch probes the endpoint for a few
seconds and stops with one line (the bucket, the endpoint, the credentials, the fix)
instead of a DNS or connection traceback after a minute of gcsfs retries. No network is
needed: the endpoints are a closed loopback port and a name that cannot resolve."""

import os
import re
import socket
import time

import pytest

from t5pt.runtime import fs
from t5pt.runtime.errors import UserError
from tests.conftest import run_module

PROMPT_GIN = 'gin/t5_1_1_tiny_prompt.gin'
# RFC 6761: .invalid never resolves, so this is a DNS failure without any network.
UNRESOLVABLE = 'http://nonexistent.invalid:1'


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch, tmp_path):
  """No endpoint known reachable, no credentials of this machine's, default timeout."""
  monkeypatch.setattr(fs, '_gcs_reachable', set())
  for name in ('GOOGLE_APPLICATION_CREDENTIALS', fs.GCS_PROBE_TIMEOUT_ENV, 'NO_GCE_CHECK'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('CLOUDSDK_CONFIG', str(tmp_path / 'gcloud'))


@pytest.mark.slow
def test_train_on_an_unreachable_bucket_stops_at_once_with_one_line():
  """The command as a user types it, GCS's host unresolvable (what a machine without DNS
  or network sees): before the probe, 60-90 s of retries and an aiohttp traceback. The
  bound on the wait is tested in-process (a hung lookup, below)."""
  result = run_module(
    't5pt.train',
    f'--gin_file={PROMPT_GIN}',
    "--gin.MODEL_DIR='gs://bucket/run'",
    env={'STORAGE_EMULATOR_HOST': UNRESOLVABLE},
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('t5pt: error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(
    "t5pt: error: MODEL_DIR='gs://bucket/run': gs://bucket is unreachable: the emulator at "
    f'STORAGE_EMULATOR_HOST={UNRESOLVABLE} (nonexistent.invalid does not resolve'
  ), errors[0]
  assert 'credentials: none found (GOOGLE_APPLICATION_CREDENTIALS unset' in errors[0]
  assert 'To fix: start the emulator' in errors[0]


def test_the_probe_names_real_gcs_and_each_kind_of_credentials(monkeypatch, tmp_path):
  monkeypatch.delenv('STORAGE_EMULATOR_HOST', raising=False)
  monkeypatch.setenv('GOOGLE_CLOUD_UNIVERSE_DOMAIN', 'nonexistent.invalid')
  assert fs.gcs_endpoint() == 'https://storage.nonexistent.invalid'
  with pytest.raises(UserError) as error:
    fs.exists('gs://bucket/run')
  message = str(error.value)
  assert message.startswith(
    'gs://bucket is unreachable: https://storage.nonexistent.invalid '
    '(storage.nonexistent.invalid does not resolve'
  ), message
  assert 'so GCE metadata, then anonymous' in message and 'gcloud auth' in message
  assert 'To fix: check that this machine reaches storage.nonexistent.invalid' in message
  assert '\n' not in message

  adc = tmp_path / 'gcloud' / 'application_default_credentials.json'
  adc.parent.mkdir()
  adc.write_text('{}')
  with pytest.raises(UserError, match=re.escape(f'credentials: gcloud default ({adc}). To fix')):
    fs.path('gs://bucket/run')
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', str(tmp_path / 'key.json'))
  with pytest.raises(UserError, match=r'GOOGLE_APPLICATION_CREDENTIALS=\S*key.json \(no such'):
    fs.path('gs://bucket/run')


def test_a_hung_name_lookup_is_bounded_by_the_timeout(monkeypatch):
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', 'gcs.example:4443')  # no scheme: http://
  monkeypatch.setenv(fs.GCS_PROBE_TIMEOUT_ENV, '0.5')

  def hung(*args, **kwargs):
    time.sleep(5)
    raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')

  monkeypatch.setattr(socket, 'getaddrinfo', hung)
  start = time.monotonic()
  with pytest.raises(UserError, match=r'\(no answer within 0\.5 s\).*raise T5PT_GCS_PROBE'):
    fs.isdir('gs://bucket/run')
  assert time.monotonic() - start < 3


def test_the_timeout_setting(monkeypatch):
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', UNRESOLVABLE)
  monkeypatch.setenv(fs.GCS_PROBE_TIMEOUT_ENV, 'soon')
  with pytest.raises(UserError, match="T5PT_GCS_PROBE_TIMEOUT='soon' is not a number"):
    fs.path('gs://bucket/run')
  monkeypatch.setenv(fs.GCS_PROBE_TIMEOUT_ENV, '0')  # no probe: epath's path, no I/O yet
  assert os.fspath(fs.path('gs://bucket/run')) == 'gs://bucket/run'
  fs.path('/tmp/local')  # local paths are never probed
  fs.path('relative')


def test_a_reachable_emulator_passes_the_probe_once(gcs_dir, monkeypatch):
  # pylint: disable=protected-access
  probes = []
  real = fs._connection_problem
  monkeypatch.setattr(fs, '_connection_problem', lambda *a: probes.append(a) or real(*a))
  fs.write_text(f'{gcs_dir}/a.txt', 'a')
  assert fs.read_text(f'{gcs_dir}/a.txt') == 'a' and fs.exists(gcs_dir)
  assert len(probes) == 1 and fs.gcs_endpoint() in fs._gcs_reachable
