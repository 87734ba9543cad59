"""Whether a run starts JAX distributed by itself: a Cloud TPU pod slice (GCE or GKE) or
a SLURM job of several tasks does, with no flag; one process does not. The cluster is
simulated with what JAX's own detection reads (environment variables, and a GCE
metadata server on localhost); `jax.distributed.initialize` itself is replaced by a
recorder, since there is no pod here."""

import http.server
import threading

import jax
import pytest
from jax._src.clusters import cloud_tpu_cluster

from t5pt.runtime import distributed

CLUSTER_VARIABLES = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
  'TPU_WORKER_HOSTNAMES',
  'TPU_PROCESS_ADDRESSES',
  'TPU_WORKER_ID',
  'OMPI_MCA_orte_hnp_uri',
  'KUBERNETES_SERVICE_HOST',
  'JAX_COORDINATOR_ADDRESS',
  'GCE_METADATA_IP',
  'TPU_SKIP_MDS_QUERY',
)


@pytest.fixture
def initialized(monkeypatch):
  """The arguments `jax.distributed.initialize` was called with (empty: not called)."""
  for name in CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args: calls.append(args))
  return calls


@pytest.fixture
def metadata_server(monkeypatch):
  """A GCE metadata server for a TPU VM, worker 1 of a 4-host slice."""
  values = {
    'agent-worker-number': '1',
    'worker-network-endpoints': 'w0:0:10.0.0.1,w1:1:10.0.0.2,w2:2:10.0.0.3,w3:3:10.0.0.4',
    'tpu-env': "ACCELERATOR_TYPE: 'v4-32'\n",
  }

  class Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      key = self.path.rsplit('/', 1)[-1]
      ok = key in values and self.headers.get('Metadata-Flavor') == 'Google'
      body = values.get(key, '').encode()
      self.send_response(200 if ok else 404)
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Metadata)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setenv('GCE_METADATA_IP', f'127.0.0.1:{server.server_address[1]}')
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
  yield values
  server.shutdown()


def test_one_process_starts_nothing(initialized):
  assert distributed.detected_cluster() is None
  distributed.initialize()
  assert initialized == []


def test_a_gce_tpu_pod_slice_starts_jax_distributed_without_a_flag(initialized, metadata_server):
  assert distributed.detected_cluster() == ('gcetpu', 4)
  distributed.initialize()
  assert initialized == [(None, None, None)]  # JAX reads the slice itself.


def test_a_single_host_tpu_vm_starts_nothing(initialized, metadata_server):
  metadata_server['worker-network-endpoints'] = 'w0:0:10.0.0.1'
  distributed.initialize()
  assert initialized == []


def test_a_gke_tpu_slice_starts_jax_distributed(initialized, metadata_server, monkeypatch):
  metadata_server.pop('agent-worker-number')  # GKE: not a GCE TPU VM's metadata
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host-0,host-1')
  monkeypatch.setenv('TPU_WORKER_ID', '1')
  assert distributed.detected_cluster() == ('gketpu', 2)
  distributed.initialize()
  assert initialized == [(None, None, None)]


@pytest.mark.parametrize('tasks, started', [('2', True), ('1', False)])
def test_a_slurm_job_of_several_tasks_starts_jax_distributed(
  initialized, monkeypatch, tasks, started
):
  for name, value in dict(
    SLURM_JOB_ID='42',
    SLURM_STEP_NODELIST='node[1-2]',
    SLURM_NTASKS=tasks,
    SLURM_PROCID='0',
    SLURM_LOCALID='0',
  ).items():
    monkeypatch.setenv(name, value)
  assert distributed.detected_cluster() == ('slurm', int(tasks))
  distributed.initialize()
  assert initialized == ([(None, None, None)] if started else [])


def test_several_processes_without_a_client_warn_once(monkeypatch, capsys):
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  monkeypatch.setattr(jax_distributed.global_state, 'client', None)
  distributed.warn_if_unprotected()
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith('t5pt: warning: 4 processes but no JAX distributed client')
  monkeypatch.setattr(jax_distributed.global_state, 'client', object())
  distributed.warn_if_unprotected()
  assert capsys.readouterr().err == ''
