"""T5X checkpoints: the real legacy fixture written by t5x, synthesised variants (bfloat16,
absolute and relative kvstore paths), T5X-layout orbax checkpoints and runs written the way
t5x's orbax CheckpointManager writes them."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from etils import epath
from flax import serialization

import gin
from t5pt.checkpoints import base_readers
from t5pt.checkpoints import opening
from t5pt.checkpoints import t5x_legacy
from t5pt.checkpoints import trained_model
from t5pt.model.methods import lora
from t5pt.model import network
from t5pt.runtime import partitioning
from t5pt.runtime import vocabularies
from t5pt.runtime.errors import UserError
from t5pt.t5x_bridge import t5x_network
from tests import hf_models
from tests.conftest import INTEROP, TINY

FIXTURE = os.path.join(INTEROP, 't5x_tiny')
LEGACY = os.path.join(FIXTURE, 'test_t5_1_1_tiny', 'checkpoint_3')
needs_fixture = pytest.mark.skipif(
  not os.path.isdir(FIXTURE),
  reason=f'interop fixtures not found at {FIXTURE} (a clone without ../shared)',
)


@needs_fixture
def test_fixture_embedding_matches_golden_file_bit_for_bit():
  checkpoint = opening.open_base(LEGACY)
  assert isinstance(checkpoint, base_readers.T5XLegacyCheckpoint)
  embedding = checkpoint.read(network.EMBEDDING_PATH)
  golden = np.load(os.path.join(FIXTURE, 'tiny_embeddings_32128x4.npy'))
  assert embedding.dtype == golden.dtype == np.float32
  assert embedding.tobytes() == golden.tobytes()


@needs_fixture
def test_fixture_architecture_is_inferred_from_shapes():
  facts, defaults = opening.open_base(LEGACY).architecture()
  assert facts == dict(
    vocab_size=32128,
    emb_dim=4,
    num_heads=2,
    head_dim=2,
    mlp_dim=8,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=4,
    logits_via_embedding=False,
  )
  assert defaults['mlp_activations'] == ('gelu', 'linear')


@needs_fixture
def test_fixture_runs_a_forward_pass_on_t5_vocabulary_tokens():
  vocabulary = vocabularies.sentencepiece(os.path.join(FIXTURE, 't5_vocab'))
  assert vocabulary.encode('hello world') == [21820, 296]
  assert vocabulary.vocab_size == 32100
  # The checkpoint cannot tell the relative-attention max distance; ../shared/interop/README.md
  # says 8.
  config, params = opening.load_model(LEGACY, network.T5Config(relative_attention_max_distance=8))
  vocabularies.check_fits(vocabulary, config.vocab_size, 't5_vocab')
  inputs = np.array([vocabulary.encode('hello world') + [1]], np.int32)
  decoder_inputs = np.array([[0, 21820, 296]], np.int32)
  logits = hf_models.t5pt_logits(
    config, params, inputs, decoder_inputs, np.ones_like(decoder_inputs)
  )
  assert logits.shape == (1, 3, 32128) and np.isfinite(logits).all()
  assert np.abs(logits).max() > 0


@needs_fixture
def test_vocabulary_from_an_hf_style_folder_or_gin(tmp_path):
  shutil.copy(os.path.join(FIXTURE, 't5_vocab'), tmp_path / 'spiece.model')
  assert vocabularies.sentencepiece(str(tmp_path)).encode('hello world') == [21820, 296]
  gin.parse_config(f"vocabularies.sentencepiece.path = '{tmp_path}'")
  try:
    assert vocabularies.sentencepiece().vocab_size == 32100
  finally:
    gin.clear_config()


def test_vocabulary_larger_than_embedding_is_rejected():
  class Big:
    vocab_size = 40000

  with pytest.raises(UserError, match='40000 ids but the model has 32128 embedding rows'):
    vocabularies.check_fits(Big(), 32128, 'my_task')


def test_missing_or_unreadable_sentencepiece_model(tmp_path):
  with pytest.raises(UserError, match='holds no SentencePiece model'):
    vocabularies.sentencepiece(str(tmp_path))
  (tmp_path / 'spiece.model').write_text('not a model')
  with pytest.raises(UserError, match='is not a SentencePiece model'):
    vocabularies.sentencepiece(str(tmp_path))


def _write_legacy(directory, params: dict, absolute: bool, zarr_dtype: str) -> None:
  """A legacy t5x checkpoint: kernels as zarr arrays, everything else inline."""
  os.makedirs(directory)
  target = {}
  for path, value in params.items():
    node = target
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    if path.endswith('kernel') or path.endswith('embedding'):
      name = 'target.' + path.replace('/', '.')
      kv_path = os.path.join(directory, name) if absolute else name
      spec = {
        'driver': 'zarr',
        'kvstore': {'driver': 'file' if absolute else 'gfile', 'path': kv_path},
        'metadata': {
          'shape': list(value.shape),
          'chunks': list(value.shape),
          'dtype': zarr_dtype,
          'compressor': {'id': 'gzip'},
        },
      }
      store = ts.open(
        {**spec, 'kvstore': {'driver': 'file', 'path': os.path.join(directory, name)}}, create=True
      ).result()
      store.write(value).result()
      node[leaf] = spec
    else:
      node[leaf] = value
  with open(os.path.join(directory, 'checkpoint'), 'wb') as f:
    f.write(
      serialization.msgpack_serialize(
        {'version': 3, 'optimizer': {'target': target, 'state': {'step': np.int32(7)}}}
      )
    )


@pytest.mark.parametrize('absolute', [False, True])
def test_synthesised_bfloat16_legacy_checkpoint_round_trips(tmp_path, absolute):
  model = hf_models.make_hf_t5('flan_t5_gated_untied')
  model.save_pretrained(tmp_path / 'hf')
  reference = opening.open_base(str(tmp_path / 'hf')).read_all()
  as_bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in reference.items()}
  _write_legacy(str(tmp_path / 'checkpoint_7'), as_bf16, absolute, zarr_dtype='bfloat16')
  # Moved after writing: relative kvstore paths must follow the checkpoint.
  os.rename(tmp_path / 'checkpoint_7', tmp_path / 'moved')
  if absolute:
    with pytest.raises(UserError, match='Cannot read'):
      opening.open_base(str(tmp_path / 'moved')).read_all()
    return
  loaded = opening.open_base(str(tmp_path / 'moved')).read_all()
  assert sorted(loaded) == sorted(reference)
  for name, value in as_bf16.items():
    assert loaded[name].dtype == ml_dtypes.bfloat16, name
    np.testing.assert_array_equal(loaded[name], value)


def test_kvstore_paths_resolve_against_the_checkpoint_location():
  spec = {'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'target.a.kernel'}}
  assert t5x_legacy.kvstore_for('gs://bucket/model/checkpoint_5', spec) == {
    'driver': 'gcs',
    'bucket': 'bucket',
    'path': 'model/checkpoint_5/target.a.kernel',
  }
  assert t5x_legacy.kvstore_for('/data/checkpoint_5', spec) == {
    'driver': 'file',
    'path': '/data/checkpoint_5/target.a.kernel',
  }


def test_corrupt_msgpack_is_a_clear_error(tmp_path):
  (tmp_path / 'checkpoint').write_bytes(b'\xc1 not msgpack')
  with pytest.raises(UserError, match='not a readable T5X msgpack checkpoint'):
    opening.open_base(str(tmp_path))


def test_t5x_layout_orbax_checkpoint_under_optimizer_target_loads(tmp_path):
  """Parameters under optimizer/target/ (target/: test_t5x_orbax_run_loads_*)."""
  prefix = 'optimizer/target'
  model = hf_models.make_hf_t5('t5_1_0_relu_tied')
  model.save_pretrained(tmp_path / 'hf')
  reference = opening.open_base(str(tmp_path / 'hf')).read_all()
  tree = {'state': {'step': np.int32(3)}}
  node = tree
  for part in prefix.split('/'):
    node = node.setdefault(part, {})
  for path, value in reference.items():
    leaf = node
    *parents, name = path.split('/')
    for p in parents:
      leaf = leaf.setdefault(p, {})
    leaf[name] = value
  ocp.PyTreeCheckpointer().save(tmp_path / 'run' / 'checkpoint_3', tree)
  config, params = opening.load_model(
    str(tmp_path / 'run'), network.T5Config(relative_attention_max_distance=20)
  )
  assert config.logits_via_embedding and config.mlp_activations == ('relu',)
  inputs, decoder_inputs, targets = hf_models.token_batch()
  ours = hf_models.t5pt_logits(config, params, inputs, decoder_inputs, targets)
  theirs = hf_models.hf_logits(model, inputs, decoder_inputs)
  np.testing.assert_allclose(ours[targets > 0], theirs[targets > 0], atol=1e-4, rtol=1e-4)
  assert isinstance(jax.tree.leaves(params)[0], jax.Array)


def _t5x_state_dict(params: dict[str, np.ndarray], step: int) -> dict:
  """What t5x's `train_state.state_dict()` holds under Adafactor: the parameters under
  target/, and state/param_states/<parameter path>/ slots (factored v_row [rows] and v_col
  [cols] for 2D kernels, a full v otherwise; unused slots are [1] zeros)."""
  flat = {f'target/{k}': v for k, v in params.items()}
  flat['state/step'] = np.int32(step)
  one = np.zeros((1,), np.float32)
  for name, value in params.items():
    rows, cols = value.shape if value.ndim == 2 else (None, None)
    slots = dict(
      v_row=one if rows is None else np.full((rows,), 0.5, np.float32),
      v_col=one if cols is None else np.full((cols,), 0.5, np.float32),
      v=np.full(value.shape, 0.5, np.float32) if rows is None else one,
      m=one,
    )
    flat.update({f'state/param_states/{name}/{k}': v for k, v in slots.items()})
  return partitioning.unflatten(flat)


def _save_t5x_run(model_dir, params_by_step: dict[int, dict[str, np.ndarray]]) -> None:
  """Saves each {step: params} as t5x's OrbaxCheckpointManagerInterface does (without its
  `dataset` item): model_dir/checkpoint_<step>/state (OCDBT) and _CHECKPOINT_METADATA."""
  manager = ocp.CheckpointManager(
    model_dir,
    options=ocp.CheckpointManagerOptions(step_prefix='checkpoint'),
    item_handlers={'state': ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
  )
  for step, params in params_by_step.items():
    state = ocp.args.PyTreeSave(_t5x_state_dict(params, step))
    manager.save(step, args=ocp.args.Composite(state=state))
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def t5x_run(tmp_path_factory):
  """(HF model, its params {t5x path: array}, a T5X model_dir): checkpoint_1 holds other
  values, checkpoint_2 the HF model's, and step 3 is a save orbax left unfinished."""
  root = tmp_path_factory.mktemp('t5x_run')
  model = hf_models.make_hf_t5('t5_1_0_relu_tied')
  model.save_pretrained(root / 'hf')
  reference = opening.open_base(str(root / 'hf')).read_all()
  model_dir = root / 'model_dir'
  _save_t5x_run(model_dir, {1: {k: v + 1 for k, v in reference.items()}, 2: reference})
  # What a save interrupted on local disk leaves: its temporary directory, never renamed.
  unfinished = model_dir / 'checkpoint_3.orbax-checkpoint-tmp-1700000000000000'
  shutil.copytree(model_dir / 'checkpoint_1', unfinished)
  (unfinished / '_CHECKPOINT_METADATA').unlink()
  return model, reference, model_dir


@pytest.mark.parametrize('where', ['', 'checkpoint_2', 'checkpoint_2/state'])
def test_t5x_orbax_run_loads_from_model_dir_step_or_item(t5x_run, where):
  model, _, model_dir = t5x_run
  config, params = opening.load_model(
    str(model_dir / where), network.T5Config(relative_attention_max_distance=20)
  )
  assert config.logits_via_embedding and config.mlp_activations == ('relu',)
  inputs, decoder_inputs, targets = hf_models.token_batch()
  ours = hf_models.t5pt_logits(config, params, inputs, decoder_inputs, targets)
  theirs = hf_models.hf_logits(model, inputs, decoder_inputs)
  np.testing.assert_allclose(ours[targets > 0], theirs[targets > 0], atol=1e-4, rtol=1e-4)


def test_t5x_orbax_run_reads_the_newest_finished_step_and_no_optimizer_slot(t5x_run):
  _, reference, model_dir = t5x_run
  checkpoint = opening.open_base(str(model_dir))
  assert checkpoint.path == str(model_dir / 'checkpoint_2')
  assert checkpoint.shapes() == {k: v.shape for k, v in reference.items()}
  for name, value in opening.open_base(str(model_dir)).read_all().items():
    np.testing.assert_array_equal(value, reference[name])


@pytest.mark.parametrize('where', ['', 'checkpoint_2'])
def test_infer_and_eval_checkpoint_path_may_be_a_t5x_run(t5x_run, where):
  # What infer.sh / t5pt.eval do with CHECKPOINT_PATH: a bare base, no prompt.
  _, reference, model_dir = t5x_run
  loaded = opening.load(str(model_dir / where))
  assert loaded.run is None
  flat = partitioning.flatten(loaded.params)
  np.testing.assert_array_equal(flat[network.EMBEDDING_PATH], reference[network.EMBEDDING_PATH])
  with pytest.raises(UserError, match=r"^CHECKPOINT_PATH='.*missing' does not exist"):
    opening.load(str(model_dir / 'missing'))


def test_object_store_step_without_commit_marker_is_skipped(gcs_dir):
  params = {network.EMBEDDING_PATH: np.arange(8, dtype=np.float32).reshape(4, 2)}
  _save_t5x_run(gcs_dir, {1: params, 2: params})
  # On an object store orbax writes in place and marks a finished step with this file.
  marker = ocp.path.atomicity.COMMIT_SUCCESS_FILE
  assert (epath.Path(gcs_dir) / 'checkpoint_2' / marker).exists()
  (epath.Path(gcs_dir) / 'checkpoint_2' / marker).unlink()
  assert opening.open_base(gcs_dir).path == f'{gcs_dir}/checkpoint_1'
  (epath.Path(gcs_dir) / 'checkpoint_1' / marker).unlink()
  with pytest.raises(UserError, match=r'^CHECKPOINT_PATH=.*none is a finished save'):
    opening.open_base(gcs_dir, setting='CHECKPOINT_PATH')


def test_unrecognised_checkpoint_path_errors_name_the_setting(tmp_path):
  with pytest.raises(UserError, match=r'^CHECKPOINT_PATH=.* does not exist'):
    opening.load_model(str(tmp_path / 'nowhere'), setting='CHECKPOINT_PATH')
  with pytest.raises(UserError, match=r'^CHECKPOINT_PATH=.* recognises: .*state/_METADATA'):
    opening.load_model(str(tmp_path), setting='CHECKPOINT_PATH')
  with pytest.raises(UserError, match=r'^INITIAL_CHECKPOINT_PATH=.* recognises'):
    opening.open_base(str(tmp_path))


def test_a_t5x_checkpoint_with_tuned_leaves_is_a_run(tmp_path):
  """What real t5x writes with gin/t5x: base and tuned leaves in one tree. The prompt
  length comes from the shapes; LoRA needs its rules from gin (alpha is not stored)."""
  config = network.T5Config(**TINY, prompt_length=3, lora_rules=lora.DEFAULT_LORA_RULES)
  ones = jnp.ones((1, 4), jnp.int32)
  variables = t5x_network.Transformer(config).init(jax.random.PRNGKey(0), ones, ones, ones)
  saved = {k: np.asarray(v) for k, v in partitioning.flatten(variables['params']).items()}
  _save_t5x_run(tmp_path / 'model', {7: saved})
  sizes_only = [f'network.T5Config.{k} = {v!r}' for k, v in TINY.items()]

  def load(*bindings):
    gin.clear_config()
    gin.parse_config(sizes_only + list(bindings))
    try:
      return opening.load(str(tmp_path / 'model'))
    finally:
      gin.clear_config()

  with pytest.raises(UserError, match=r'LoRA factors on 12 kernels \(rank 8\).*lora_rules'):
    load()
  with pytest.raises(UserError, match='prompt_length = 5 in gin, but .* trained with 3'):
    load(
      'network.T5Config.lora_rules = %adapters.DEFAULT_LORA_RULES',
      'network.T5Config.prompt_length = 5',
    )
  loaded = load('network.T5Config.lora_rules = %adapters.DEFAULT_LORA_RULES')
  assert isinstance(loaded.run, trained_model.T5XRun) and loaded.run.step == 7
  assert loaded.config.prompt_length == 3
  assert sorted(loaded.run.params) == sorted(k for k in saved if network.is_added_by_tuning(k))
  for name, value in partitioning.flatten(loaded.params).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
