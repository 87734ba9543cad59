"""The t5x-style command line and every shipped gin file."""

import glob
import os

import gin
import pytest

from t5pt import gin_utils
from t5pt.errors import UserError
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_rewrite_gin_shorthand():
  assert gin_utils.rewrite_gin_args(
      ['prog', "--gin.MODEL_DIR='/x'", '--gin_file=a.gin', '--gin.network.T5Config.emb_dim=8']
  ) == ['prog', "--gin_bindings=MODEL_DIR = '/x'", '--gin_file=a.gin',
        '--gin_bindings=network.T5Config.emb_dim = 8']


# run.gin is not standalone: it needs a model file, and every config here includes it.
TOP_LEVEL = sorted(p for p in glob.glob(os.path.join(REPO, 'gin', '*.gin')) +
                   glob.glob(os.path.join(REPO, 'gin', 'demo', '*.gin'))
                   if not p.endswith('run.gin'))


@pytest.mark.parametrize('path', TOP_LEVEL, ids=os.path.basename)
def test_every_top_level_config_parses_and_binds_the_t5x_macros(path):
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'"])
  for macro in ('MODEL_DIR', 'MIXTURE_OR_TASK_NAME', 'MIXTURE_OR_TASK_MODULE',
                'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS', 'BATCH_SIZE', 'INITIAL_CHECKPOINT_PATH',
                'DROPOUT_RATE', 'USE_CACHED_TASKS', 'PROMPT_LENGTH', 'PROMPT_INIT'):
    assert macro in gin_utils.defined_macros()
  assert gin.query_parameter('network.T5Config.emb_dim') > 0


@pytest.mark.parametrize('size, emb_dim', [('small', 512), ('base', 768), ('large', 1024),
                                           ('xl', 2048), ('xxl', 4096)])
def test_model_sizes(size, emb_dim):
  gin_utils.parse([f'gin/models/t5_1_1_{size}.gin', 'gin/run.gin'], [])
  assert gin.query_parameter('network.T5Config.emb_dim') == emb_dim
  assert gin.query_parameter('network.T5Config.vocab_size') == 32128


def test_search_paths_resolve_includes_and_files(tmp_path):
  (tmp_path / 'mine.gin').write_text("include 'models/t5_1_1_tiny.gin'\n"
                                     "include 'run.gin'\nBATCH_SIZE = 4\n")
  gin_utils.parse(['mine.gin'], [], search_paths=[str(tmp_path)])
  assert gin.query_parameter('BATCH_SIZE/macro.value') == 4


def test_missing_gin_file_and_bad_syntax(tmp_path):
  with pytest.raises(UserError, match='not found'):
    gin_utils.parse(['nope.gin'], [])
  bad = tmp_path / 'bad.gin'
  bad.write_text('TRAIN_STEPS = = 3\n')
  with pytest.raises(UserError, match='bad.gin'):
    gin_utils.parse([str(bad)], [])
