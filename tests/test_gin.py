"""The t5x-style command line and every shipped gin file."""

import glob
import os

import pytest

import gin
from t5pt.checkpoints import hf_format
from t5pt.model import network
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.training import run_setup
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_rewrite_gin_shorthand():
  assert gin_utils.rewrite_gin_args(
    ['prog', "--gin.MODEL_DIR='/x'", '--gin_file=a.gin', '--gin.network.T5Config.emb_dim=8']
  ) == [
    'prog',
    "--gin_bindings=MODEL_DIR = '/x'",
    '--gin_file=a.gin',
    '--gin_bindings=network.T5Config.emb_dim = 8',
  ]


# run.gin is not standalone: it needs a model file, and every config here includes it.
# infer.gin and eval.gin configure the other two entry points (tested below).
OTHER_ENTRY_POINTS = ('run.gin', 'infer.gin', 'eval.gin')
TOP_LEVEL = sorted(
  p
  for p in glob.glob(os.path.join(REPO, 'gin', '*.gin'))
  + glob.glob(os.path.join(REPO, 'gin', 'demo', '*.gin'))
  if os.path.basename(p) not in OTHER_ENTRY_POINTS
)


@pytest.mark.parametrize(
  'path, output_macro', [('gin/infer.gin', 'INFER_OUTPUT_DIR'), ('gin/eval.gin', 'EVAL_OUTPUT_DIR')]
)
def test_inference_configs_bind_the_t5x_macros(path, output_macro):
  gin_utils.parse(
    [path],
    [
      "CHECKPOINT_PATH = '/runs/x'",
      f"{output_macro} = '/out'",
      'BATCH_SIZE = 8',
      "MIXTURE_OR_TASK_NAME = 'task'",
      "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
    ],
  )
  configurable = 'batch_inference.infer' if 'infer' in path else 'evaluation.evaluate'
  assert str(gin.query_parameter(f'{configurable}.batch_size')) == '%BATCH_SIZE'
  assert str(gin.query_parameter(f'{configurable}.output_dir')) == f'%{output_macro}'
  assert gin.query_parameter('BATCH_SIZE/macro.value') == 8


@pytest.mark.parametrize('path', TOP_LEVEL, ids=os.path.basename)
def test_every_top_level_config_parses_and_binds_the_t5x_macros(path):
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'"])
  for macro in (
    'MODEL_DIR',
    'MIXTURE_OR_TASK_NAME',
    'MIXTURE_OR_TASK_MODULE',
    'TASK_FEATURE_LENGTHS',
    'TRAIN_STEPS',
    'BATCH_SIZE',
    'INITIAL_CHECKPOINT_PATH',
    'DROPOUT_RATE',
    'USE_CACHED_TASKS',
    'PROMPT_LENGTH',
    'PROMPT_INIT',
  ):
    assert macro in gin_utils.defined_macros()
  if os.path.basename(path) == 'checkpoint_prompt.gin':  # Sizes from the checkpoint.
    with pytest.raises(ValueError):
      gin.query_parameter('network.T5Config.emb_dim')
  else:
    assert gin.query_parameter('network.T5Config.emb_dim') > 0


# google/flan-t5-{size} config.json values on the HF hub (the fields that set shapes).
FLAN_T5_HUB_CONFIGS = {
  'small': dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8),
  'base': dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12),
  'large': dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24),
  'xl': dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24),
  'xxl': dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24),
}


@pytest.mark.parametrize('size', sorted(FLAN_T5_HUB_CONFIGS))
def test_flan_configs_agree_with_the_hub_checkpoints(size):
  gin_utils.parse([f'gin/flan_t5_{size}_prompt.gin'], [])
  assert gin.query_parameter('INITIAL_CHECKPOINT_PATH/macro.value') == (
    f'checkpoints/flan-t5-{size}'
  )
  hub = dict(
    FLAN_T5_HUB_CONFIGS[size],
    vocab_size=32128,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    model_type='t5',
  )
  facts = hf_format.architecture_from_hf(hub, 'config.json')
  config = network.T5Config().reconcile(facts, 'config.json')  # Raises on any mismatch.
  assert config.architecture() == network.T5Config().architecture()
  assert config.prompt_length == 100


def test_search_paths_resolve_includes_and_files(tmp_path):
  (tmp_path / 'mine.gin').write_text(
    "include 'models/t5_1_1_tiny.gin'\ninclude 'run.gin'\nBATCH_SIZE = 4\n"
  )
  gin_utils.parse(['mine.gin'], [], search_paths=[str(tmp_path)])
  assert gin.query_parameter('BATCH_SIZE/macro.value') == 4


def test_missing_gin_file_and_bad_syntax(tmp_path):
  with pytest.raises(UserError, match='not found'):
    gin_utils.parse(['nope.gin'], [])
  bad = tmp_path / 'bad.gin'
  bad.write_text('TRAIN_STEPS = = 3\n')
  with pytest.raises(UserError, match='bad.gin'):
    gin_utils.parse([str(bad)], [])


@pytest.mark.parametrize(
  'method, trainable, prompt_length',
  [
    ('lora', ['.*/(lora_a|lora_b)'], 0),
    ('prompt_lora', ['encoder/prompt/prompt', '.*/(lora_a|lora_b)'], 8),
    ('deep_prompt', ['.*/(prefix_key|prefix_value)'], 0),
    ('ia3', ['.*/ia3_scale'], 0),
  ],
)
def test_method_files_layer_over_a_top_level_config(method, trainable, prompt_length):
  gin_utils.parse(
    ['gin/t5_1_1_tiny_prompt.gin', f'gin/methods/{method}.gin'], ["MODEL_DIR = '/tmp/x'"]
  )
  assert gin.query_parameter('TRAINABLE/macro.value') is None  # The method decides.
  assert gin.query_parameter('PROMPT_LENGTH/macro.value') == prompt_length
  config = gin.get_configurable(network.T5Config)()
  assert list(run_setup.trainable_patterns(None, config)) == trainable
  assert bool(config.lora_rules) == ('lora' in method)
  assert bool(config.ia3_pattern) == (method == 'ia3')
  assert config.prefix_length == (32 if method == 'deep_prompt' else 0)


@pytest.mark.parametrize('size', ['small', 'base', 'large', 'xl'])
def test_bench_shapes_are_the_model_files(size, monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(REPO, 'bench'))
  import train_step  # pylint: disable=import-outside-toplevel

  gin_utils.parse([f'gin/models/t5_1_1_{size}.gin'], [])
  from_gin = network.T5Config()
  for field, value in train_step.sizes(size).items():
    assert getattr(from_gin, field) == value, field
  assert sorted(train_step.MODELS) == ['base', 'large', 'small', 'xl']
