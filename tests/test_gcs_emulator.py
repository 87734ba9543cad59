"""The gs:// test harness itself: epath, tensorstore and orbax really reach the emulator's
bucket (each checked against the server's own object listing), and nothing lands locally."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorstore as ts
from etils import epath
from etils.epath import backend


def _prefix(bucket, url: str) -> str:
  return url.removeprefix(bucket.url + '/')


def test_epath_on_gs_goes_through_gcsfs_to_the_emulator(gcs_bucket, gcs_dir):
  root, prefix = epath.Path(gcs_dir), _prefix(gcs_bucket, gcs_dir)
  assert root._backend is backend.fsspec_backend  # pylint: disable=protected-access
  assert not root.exists()
  (root / 'd').mkdir(parents=True, exist_ok=True)
  (root / 'd' / 'a.txt').write_text('hello')
  assert gcs_bucket.objects(prefix) == [f'{prefix}/d/a.txt']
  assert (root / 'd' / 'a.txt').read_text() == 'hello'
  assert root.exists() and (root / 'd').is_dir() and (root / 'd' / 'a.txt').is_file()
  assert [p.name for p in root.iterdir()] == ['d']
  assert [os.fspath(p) for p in root.glob('*/*.txt')] == [f'{gcs_dir}/d/a.txt']

  (root / 'd' / 'a.txt').rename(root / 'd' / 'b.txt')
  assert gcs_bucket.objects(prefix) == [f'{prefix}/d/b.txt']
  assert (root / 'd' / 'b.txt').read_text() == 'hello'
  (root / 'd' / 'b.txt').unlink()
  assert gcs_bucket.objects(prefix) == []

  (root / 'e' / 'f').mkdir(parents=True)
  (root / 'e' / 'f' / 'x.json').write_bytes(b'{}')
  (root / 'e' / 'y.txt').write_text('y')
  assert len(gcs_bucket.objects(prefix)) == 2
  root.rmtree()
  assert gcs_bucket.objects(prefix) == [] and not root.exists()


@pytest.mark.parametrize('kvstore', ['gcs', 'ocdbt'])
def test_tensorstore_zarr_on_gs(gcs_bucket, gcs_dir, kvstore):
  prefix = _prefix(gcs_bucket, gcs_dir)
  if kvstore == 'gcs':
    spec = {'driver': 'gcs', 'bucket': gcs_bucket.url[5:], 'path': prefix + '/'}
  else:  # What orbax writes: an OCDBT database on a gs:// base.
    spec = {'driver': 'ocdbt', 'base': gcs_dir + '/'}
  array = np.arange(24 * 10, dtype=np.float32).reshape(24, 10)
  store = ts.open(
    {'driver': 'zarr3', 'kvstore': spec},
    create=True,
    dtype=ts.float32,
    shape=array.shape,
    chunk_layout=ts.ChunkLayout(chunk_shape=[8, 8]),
  )
  store = store.result(timeout=60)
  store.write(array).result(timeout=60)
  names = gcs_bucket.objects(prefix)
  expected = 'zarr.json' if kvstore == 'gcs' else 'manifest.ocdbt'
  assert f'{prefix}/{expected}' in names and len(names) > 1, names
  reopened = ts.open({'driver': 'zarr3', 'kvstore': spec}, open=True).result(timeout=60)
  np.testing.assert_array_equal(reopened.read().result(timeout=60), array)


def test_orbax_checkpoint_manager_on_gs(gcs_bucket, gcs_dir, tmp_path, monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(tmp_path)  # Anything written locally by mistake would land here.
  run, prefix = f'{gcs_dir}/run', _prefix(gcs_bucket, gcs_dir) + '/run'
  params = {
    'encoder': {
      'kernel': np.arange(12, dtype=np.float32).reshape(3, 4),
      'scale': np.ones(4, np.float32),
    }
  }
  params = jax.tree.map(jax.numpy.asarray, params)
  opt_state = {'mu': jax.numpy.zeros((3, 4)), 'count': jax.numpy.array(3, jax.numpy.int32)}
  manager = ocp.CheckpointManager(
    run,
    options=ocp.CheckpointManagerOptions(
      max_to_keep=3, step_prefix='checkpoint', create=True, cleanup_tmp_directories=True
    ),
  )
  for step in (1, 2):
    manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(jax.tree.map(lambda x, s=step: x * s, params)),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({'step': step, 'task': 'demo'}),
      ),
    )
  manager.wait_until_finished()
  manager.close()
  names = gcs_bucket.objects(prefix)
  for step in (1, 2):
    for item in ('', 'params/', 'opt_state/', 'meta/'):
      assert f'{prefix}/checkpoint_{step}/{item}commit_success.txt' in names, names
    assert f'{prefix}/checkpoint_{step}/params/manifest.ocdbt' in names, names

  reader = ocp.CheckpointManager(
    run, options=ocp.CheckpointManagerOptions(step_prefix='checkpoint', read_only=True)
  )
  assert reader.latest_step() == 2 and reader.all_steps() == [1, 2]
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params
  )
  restored = reader.restore(
    2,
    args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
  )
  assert restored.meta == {'step': 2, 'task': 'demo'}
  jax.tree.map(
    lambda got, want: np.testing.assert_array_equal(got, want * 2), restored.params, params
  )
  assert restored.params['encoder']['kernel'].sharding == sharding
  reader.close()
  assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_subprocess_is_wired_by_env_alone(gcs_bucket, gcs_dir, tmp_path):
  """What the end-to-end tests rely on: `python -m t5pt...` given `gcs_bucket.env`."""
  prefix = _prefix(gcs_bucket, gcs_dir)
  script = textwrap.dedent(f'''
      import tensorstore as ts
      from etils import epath
      from etils.epath import backend
      out = epath.Path({gcs_dir!r})
      assert out._backend is backend.fsspec_backend, out._backend
      (out / 'config.gin').write_text('x = 1')
      kv = ts.KvStore.open({{'driver': 'ocdbt', 'base': {gcs_dir + '/arrays/'!r}}}).result()
      kv.write('k', b'v').result()
      assert kv.read('k').result().value == b'v'
  ''')
  env = {k: v for k, v in os.environ.items() if k not in gcs_bucket.env}
  result = subprocess.run(
    [sys.executable, '-c', script],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env={**env, **gcs_bucket.env},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  names = gcs_bucket.objects(prefix)
  assert f'{prefix}/config.gin' in names and f'{prefix}/arrays/manifest.ocdbt' in names, names
  assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
