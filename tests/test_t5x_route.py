"""Real t5x trains, decodes and evaluates with t5pt's own gin files (the literal
`python -m t5x.train --gin_file=t5x/configs/runs/finetune.gin --gin_file=gin/...`), and
t5pt reads what it wrote.

Opt-in: t5x is not in the package registries. Set T5X_PYTHON to a Python where
`import t5x` works (docs/t5x.md, "Installing t5x beside t5pt's pins", shows how to build
one); without it these tests skip and say so. Each t5x command runs on the CPU in a
subprocess, from the repository root, with the checkout first on PYTHONPATH.
"""

import glob
import json
import os
import subprocess

import numpy as np
import pytest

from t5pt.checkpoints import opening
from t5pt.model import network
from tests.conftest import REPO, run_module

T5X_PYTHON = os.environ.get('T5X_PYTHON')
pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    not T5X_PYTHON,
    reason='real t5x not available: set T5X_PYTHON to a Python where `import t5x` works, '
    'built as docs/t5x.md "Installing t5x beside t5pt\'s pins" shows, to run the shared '
    'gin files under t5x',
  ),
]
# Normalised: tensorstore (t5x's reader) refuses paths with '..' in them.
INTEROP_T5X = os.path.normpath(
  os.path.join(REPO, '..', 'shared', 'interop', 't5x_tiny', 'test_t5_1_1_tiny')
)
INTEROP_VOCABULARY = os.path.join(INTEROP_T5X, '..', 't5_vocab')
TASK = 'synthetic_heldout_max'
LENGTHS = "{'inputs': 24, 'targets': 10}"
# What a user's own gin file says for a byte-level task, a random-uniform prompt and
# greedy decoding on the CPU.
TINY_RUN = """
from __gin__ import dynamic_registration
import __main__ as script
from t5pt.model import prompts
from t5x import decoding
from t5x import models
from t5x import utils
PROMPT_INIT = @prompts.random_uniform
models.EncoderDecoderModel.decode_fn = @decoding.temperature_sample
decoding.temperature_sample.temperature = 0.0
utils.RestoreCheckpointConfig.dtype = 'float32'
utils.SaveCheckpointConfig.period = 2
"""
TRAIN_ONLY = """
script.train.infer_eval_dataset_cfg = None
"""
EVAL_SPLIT = """
utils.DatasetConfig.split = 'validation'
"""
# The legacy T5X checkpoint of ../shared/interop (README there).
INTEROP_SIZES = """
from t5pt.model import network
network.T5Config:
  vocab_size = 32128
  dtype = 'float32'
  emb_dim = 4
  num_heads = 2
  num_encoder_layers = 2
  num_decoder_layers = 2
  head_dim = 2
  mlp_dim = 8
  mlp_activations = ('gelu', 'linear')
  logits_via_embedding = False
  relative_attention_num_buckets = 4
  relative_attention_max_distance = 8
"""


def _t5x(script, run_config, gin_files, tmp_path, gin_text, **macros) -> str:
  """Runs `python -m t5x.<script>` with t5x's run config, then t5pt's gin files, then
  the test's own; returns its log. Fails the test with the log's tail on error."""
  extra = tmp_path / f'{script}_extra.gin'
  extra.write_text(gin_text)
  flags = [f'--gin_file=t5x/configs/runs/{run_config}.gin']
  flags += [f'--gin_file={f}' for f in gin_files] + [f'--gin_file={extra}']
  flags += [f'--gin.{k}={v}' for k, v in macros.items()]
  env = {
    **os.environ,
    'PYTHONPATH': REPO,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '',
  }
  result = subprocess.run(
    [T5X_PYTHON, '-m', f't5x.{script}', '--gin_search_paths=gin', *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  log = result.stdout + result.stderr
  assert result.returncode == 0, log[-6000:]
  return log


def _t5pt(module, *args):
  result = run_module(module, *args)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  return result


def _task_macros(**more):
  return {
    'MIXTURE_OR_TASK_NAME': f"'{TASK}'",
    'MIXTURE_OR_TASK_MODULE': "'tasks.synthetic'",
    'TASK_FEATURE_LENGTHS': LENGTHS.replace(' ', ''),
    **more,
  }


def _params(path):
  return opening.open_base(path).read_all()


def _changed(before, after):
  return sorted(k for k in before if not np.array_equal(before[k], after[k]))


def _jsonl(pattern):
  (path,) = glob.glob(pattern)
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def t5x_prompt_run(tmp_path_factory):
  """A prompt trained by real t5x on a tiny, randomly initialised base (4 steps)."""
  tmp = tmp_path_factory.mktemp('t5x_prompt')
  model_dir = tmp / 'model'
  _t5x(
    'train',
    'finetune',
    ['gin/t5_1_1_tiny_prompt.gin'],
    tmp,
    TINY_RUN + TRAIN_ONLY,
    **_task_macros(
      MODEL_DIR=f"'{model_dir}'", TRAIN_STEPS=4, BATCH_SIZE=8, PROMPT_LENGTH=4, EVAL_STEPS=1
    ),
  )
  return str(model_dir)


def test_t5x_trains_only_the_prompt(t5x_prompt_run):
  before = _params(os.path.join(t5x_prompt_run, 'checkpoint_0'))
  after = _params(os.path.join(t5x_prompt_run, 'checkpoint_4'))
  assert _changed(before, after) == [network.PROMPT_PATH]
  assert after[network.PROMPT_PATH].shape == (4, 128)


def test_t5x_infer_and_t5pt_infer_decode_the_same(t5x_prompt_run, tmp_path):
  _t5x(
    'infer',
    'infer',
    ['gin/t5_1_1_tiny_prompt.gin'],
    tmp_path,
    TINY_RUN + EVAL_SPLIT,
    **_task_macros(
      CHECKPOINT_PATH=f"'{t5x_prompt_run}/checkpoint_4'",
      INFER_OUTPUT_DIR=f"'{tmp_path / 't5x'}'",
      PROMPT_LENGTH=4,
    ),
  )
  t5x_lines = _jsonl(str(tmp_path / 't5x' / f'{TASK}-predict.jsonl-00000-of-00001'))
  _t5pt(
    't5pt.infer',
    '--gin_file=gin/infer.gin',
    f"--gin.CHECKPOINT_PATH='{t5x_prompt_run}'",
    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 't5pt'}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    "--gin.MIXTURE_OR_TASK_MODULE='tasks.synthetic'",
    f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
  )
  t5pt_lines = _jsonl(str(tmp_path / 't5pt' / f'{TASK}-validation.jsonl'))
  assert len(t5x_lines) == len(t5pt_lines) == 512
  assert [l['inputs']['inputs_pretokenized'] for l in t5x_lines] == [
    l['inputs'] for l in t5pt_lines
  ]
  assert [l['prediction'] for l in t5x_lines] == [l['prediction'] for l in t5pt_lines]


def test_t5x_eval_and_t5pt_eval_agree(t5x_prompt_run, tmp_path):
  _t5x(
    'eval',
    'eval',
    ['gin/t5_1_1_tiny_prompt.gin'],
    tmp_path,
    TINY_RUN + EVAL_SPLIT,
    **_task_macros(
      CHECKPOINT_PATH=f"'{t5x_prompt_run}/checkpoint_4'",
      EVAL_OUTPUT_DIR=f"'{tmp_path / 't5x'}'",
      PROMPT_LENGTH=4,
    ),
  )
  (t5x_metrics,) = _jsonl(str(tmp_path / 't5x' / 'inference_eval' / f'{TASK}-metrics.jsonl'))
  _t5pt(
    't5pt.eval',
    '--gin_file=gin/eval.gin',
    f"--gin.CHECKPOINT_PATH='{t5x_prompt_run}'",
    f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 't5pt'}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    "--gin.MIXTURE_OR_TASK_MODULE='tasks.synthetic'",
    f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
  )
  (t5pt_metrics,) = _jsonl(str(tmp_path / 't5pt' / f'{TASK}-metrics.jsonl'))
  assert t5pt_metrics['sequence_accuracy'] == pytest.approx(t5x_metrics['sequence_accuracy'])


def test_t5pt_exports_what_t5x_trained(t5x_prompt_run, tmp_path):
  _t5pt(
    't5pt.export',
    f'--model_dir={t5x_prompt_run}',
    f'--prompt_npy={tmp_path / "prompt.npy"}',
    f'--peft_dir={tmp_path / "peft"}',
  )
  trained = _params(os.path.join(t5x_prompt_run, 'checkpoint_4'))[network.PROMPT_PATH]
  np.testing.assert_array_equal(np.load(tmp_path / 'prompt.npy'), trained)
  with open(tmp_path / 'peft' / 'adapter_config.json') as f:
    config = json.load(f)
  assert (config['peft_type'], config['num_virtual_tokens'], config['token_dim']) == (
    'PROMPT_TUNING',
    4,
    128,
  )


def test_a_t5pt_prompt_initialises_a_t5x_run(prompt_run, tmp_path):
  _t5pt('t5pt.export', f'--model_dir={prompt_run}', f'--prompt_npy={tmp_path / "p.npy"}')
  exported = np.load(tmp_path / 'p.npy')
  model_dir = tmp_path / 'model'
  _t5x(
    'train',
    'finetune',
    ['gin/t5_1_1_tiny_prompt.gin'],
    tmp_path,
    TINY_RUN
    + TRAIN_ONLY
    + f"PROMPT_INIT = @prompts.from_file\nprompts.from_file.path = '{tmp_path / 'p.npy'}'\n",
    **_task_macros(
      MODEL_DIR=f"'{model_dir}'",
      TRAIN_STEPS=2,
      BATCH_SIZE=8,
      PROMPT_LENGTH=exported.shape[0],
      EVAL_STEPS=1,
    ),
  )
  initial = _params(str(model_dir / 'checkpoint_0'))[network.PROMPT_PATH]
  np.testing.assert_array_equal(initial, exported)


@pytest.mark.skipif(not os.path.isdir(INTEROP_T5X), reason='../shared/interop is absent')
def test_t5x_tunes_a_prompt_on_a_legacy_t5x_checkpoint(tmp_path):
  """The frozen base restored from a checkpoint real t5x wrote, the prompt sampled from
  its embedding; t5pt reads the result."""
  base = os.path.join(INTEROP_T5X, 'checkpoint_3')
  model_dir = tmp_path / 'model'
  _t5x(
    'train',
    'finetune',
    ['gin/flan_t5_small_prompt.gin'],
    tmp_path,
    TINY_RUN.replace('PROMPT_INIT = @prompts.random_uniform\n', '') + INTEROP_SIZES + TRAIN_ONLY,
    **_task_macros(
      MODEL_DIR=f"'{model_dir}'",
      INITIAL_CHECKPOINT_PATH=f"'{base}'",
      TRAIN_STEPS=2,
      BATCH_SIZE=8,
      PROMPT_LENGTH=3,
      EVAL_STEPS=1,
    ),
  )
  original = _params(base)
  trained = _params(str(model_dir / 'checkpoint_5'))
  frozen = sorted(set(trained) - {network.PROMPT_PATH})
  assert frozen == sorted(original)
  for name in frozen:
    np.testing.assert_array_equal(trained[name], original[name], err_msg=name)
  initial = _params(str(model_dir / 'checkpoint_3'))[network.PROMPT_PATH]
  embedding = original[network.EMBEDDING_PATH]
  assert all(np.any(np.all(embedding == row, axis=1)) for row in initial)  # sampled rows
  assert not np.array_equal(initial, trained[network.PROMPT_PATH])

  (tmp_path / 'in.txt').write_text('abc\nhgf\n')
  _t5pt(
    't5pt.infer',
    '--gin_file=gin/infer.gin',
    f"--gin.CHECKPOINT_PATH='{model_dir}'",
    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'out'}'",
    f"--gin.INPUT_FILE='{tmp_path / 'in.txt'}'",
    f"--gin.VOCABULARY_PATH='{INTEROP_VOCABULARY}'",
    f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
  )
  assert len(_jsonl(str(tmp_path / 'out' / 'in-txt.jsonl'))) == 2


@pytest.mark.skipif(not os.path.isdir(INTEROP_T5X), reason='../shared/interop is absent')
def test_t5x_lora_round_trip(tmp_path):
  """LoRA trained by t5x through t5pt's own Flan-T5 LoRA file on a T5X base: only the
  factors change, and t5pt decodes as t5x does once given the rules (LoRA's alpha is
  not in the checkpoint; without them, a clear error)."""
  base = os.path.join(INTEROP_T5X, 'checkpoint_3')
  model_dir = tmp_path / 'model'
  gin_files = ['gin/flan_t5_small_lora.gin']
  sizes = TINY_RUN.replace('PROMPT_INIT = @prompts.random_uniform\n', '') + INTEROP_SIZES
  _t5x(
    'train',
    'finetune',
    gin_files,
    tmp_path,
    sizes + TRAIN_ONLY + 'LEARNING_RATE = 0.05\n',
    **_task_macros(
      MODEL_DIR=f"'{model_dir}'",
      INITIAL_CHECKPOINT_PATH=f"'{base}'",
      TRAIN_STEPS=4,
      BATCH_SIZE=8,
      EVAL_STEPS=1,
    ),
  )
  original, trained = _params(base), _params(str(model_dir / 'checkpoint_7'))
  for name in original:
    np.testing.assert_array_equal(trained[name], original[name], err_msg=name)
  changed = _changed(_params(str(model_dir / 'checkpoint_3')), trained)
  assert changed and all(k.endswith(('/lora_a', '/lora_b')) for k in changed)
  _t5x(
    'infer',
    'infer',
    gin_files,
    tmp_path,
    sizes + EVAL_SPLIT,
    **_task_macros(
      CHECKPOINT_PATH=f"'{model_dir}/checkpoint_7'", INFER_OUTPUT_DIR=f"'{tmp_path / 't5x'}'"
    ),
  )
  t5pt_infer = [
    't5pt.infer',
    '--gin_file=gin/infer.gin',
    f"--gin.CHECKPOINT_PATH='{model_dir}'",
    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 't5pt'}'",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    "--gin.MIXTURE_OR_TASK_MODULE='tasks.synthetic'",
    f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
  ]
  refused = run_module(*t5pt_infer)
  assert refused.returncode == 2 and 'lora_rules' in refused.stderr
  assert not (tmp_path / 't5pt').exists()
  _t5pt(*t5pt_infer, '--gin.network.T5Config.lora_rules=%adapters.DEFAULT_LORA_RULES')
  t5x_lines = _jsonl(str(tmp_path / 't5x' / f'{TASK}-predict.jsonl-00000-of-00001'))
  t5pt_lines = _jsonl(str(tmp_path / 't5pt' / f'{TASK}-validation.jsonl'))
  assert [l['prediction'] for l in t5x_lines] == [l['prediction'] for l in t5pt_lines]
  _t5pt(
    't5pt.export',
    f'--model_dir={model_dir}',
    f'--peft_dir={tmp_path / "peft"}',
    '--gin.network.T5Config.lora_rules=%adapters.DEFAULT_LORA_RULES',
  )
  with open(tmp_path / 'peft' / 'adapter_config.json') as f:
    config = json.load(f)
  assert (config['peft_type'], config['r'], config['lora_alpha']) == ('LORA', 8, 16.0)
