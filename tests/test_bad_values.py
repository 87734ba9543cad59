"""A catalogue of bad values a user can set, each of which must end in one clear message
naming what the user typed, before anything is written (no traceback, no output)."""

import os
import socket

import numpy as np
import pytest

import gin
from t5pt.runtime import fs
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.serving import batch_inference
from t5pt.serving import evaluation
from t5pt.training import trainer
from tests.conftest import run_module

ADAMW = ['OPTIMIZER = @optimizers.adamw()', 'optimizers.adamw.decay_steps = 100']
ONE = "INPUT_FILE = '{tmp}/one.txt'"
FROM_FILE = 'PROMPT_INIT = @prompts.from_file'

# (entry point, gin bindings, fragments the message must hold). `{run}`: a trained prompt
# run; `{tmp}`: the test's directory, holding the files `_user_files` writes. A gs:// path
# is tried with GCS unreachable (STORAGE_EMULATOR_HOST at a closed port).
CASES = [
  ('train', ['TRAIN_STEPS = -1'], ['TRAIN_STEPS (trainer.train.train_steps) = -1', '0 or more']),
  ('train', ['TRAIN_STEPS = 1.5'], ['TRAIN_STEPS', 'whole number']),
  ('train', ["TRAIN_STEPS = '100'"], ['TRAIN_STEPS', 'whole number']),
  ('train', ['BATCH_SIZE = 0'], ['BATCH_SIZE (trainer.train.batch_size) = 0']),
  ('train', ['EVAL_PERIOD = 0'], ['EVAL_PERIOD (trainer.train.eval_period) = 0']),
  ('train', ['CHECKPOINT_PERIOD = -5'], ['CHECKPOINT_PERIOD', '= -5']),
  ('train', ['LOG_PERIOD = 0'], ['LOG_PERIOD (trainer.train.log_period)']),
  ('train', ['trainer.train.keep_checkpoints = 0'], ['trainer.train.keep_checkpoints = 0']),
  ('train', ['SEED = -1'], ['SEED (trainer.train.seed) = -1']),
  ('train', ["SEED = 'abc'"], ['SEED', 'whole number']),
  ('train', ['DROPOUT_RATE = 1.0'], ['DROPOUT_RATE (network.T5Config.dropout_rate)', '[0, 1)']),
  ('train', ['DROPOUT_RATE = -0.1'], ['DROPOUT_RATE', '[0, 1)']),
  ('train', ['PROMPT_LENGTH = -1'], ['PROMPT_LENGTH (network.T5Config.prompt_length) = -1']),
  ('train', ['PROMPT_LENGTH = 2.5'], ['PROMPT_LENGTH', 'whole number']),
  ('train', ["TASK_FEATURE_LENGTHS = {'inputs': 24}"], ['TASK_FEATURE_LENGTHS', "'targets'"]),
  ('train', ['TASK_FEATURE_LENGTHS = [24, 10]'], ['TASK_FEATURE_LENGTHS', 'dict like']),
  (
    'train',
    ["TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 0}"],
    ["TASK_FEATURE_LENGTHS (trainer.train.task_feature_lengths)['targets'] = 0"],
  ),
  ('train', ["TRAINABLE = 'encoder/prompt/prompt'"], ['TRAINABLE', 'list of regexes']),
  ('train', ["TRAINABLE = ['[']"], ['TRAINABLE', "'[' is not a regular expression"]),
  ('train', ["TRAINABLE = ['decoder/nothing']"], ["'decoder/nothing' matches no parameter"]),
  ('train', ["FROZEN_DTYPE = 'fp16'"], ["FROZEN_DTYPE (trainer.train.frozen_dtype) = 'fp16'"]),
  ('train', ["FROZEN_DTYPE = 'int8'"], ['FROZEN_DTYPE', "'bfloat16'"]),
  ('train', ['NUM_PARTITIONS = 0'], ['NUM_PARTITIONS (partitioning.PartitionConfig']),
  ('train', ['NUM_PARTITIONS = 3'], ['NUM_PARTITIONS=3', 'does not divide']),
  ('train', ["PACK = 'yes'"], ['PACK (trainer.train.pack)', 'True or False']),
  ('train', ['NUM_MICROBATCHES = 0'], ['NUM_MICROBATCHES (trainer.train.num_microbatches) = 0']),
  ('train', ['NUM_MICROBATCHES = 5'], ['NUM_MICROBATCHES', 'does not divide BATCH_SIZE=']),
  ('train', ["REMAT_POLICY = 'yes'"], ['REMAT_POLICY (network.T5Config.remat_policy)', "'full'"]),
  ('train', ['INFER_EVAL = 1'], ['INFER_EVAL', 'True or False']),
  ('train', ["INT8_BASE = 'True'"], ['INT8_BASE', 'True or False']),
  ('train', ['MIXTURE_OR_TASK_NAME = 5'], ['MIXTURE_OR_TASK_NAME', 'inner quotes']),
  ('train', ["MIXTURE_OR_TASK_NAME = 'synthetic_heldout_mx'"], ['synthetic_heldout_max']),
  ('train', ['MIXTURE_OR_TASK_MODULE = 7'], ['MIXTURE_OR_TASK_MODULE', 'module name']),
  ('train', ["MIXTURE_OR_TASK_MODULE = 'my_tasks_nowhere'"], ["'my_tasks_nowhere'"]),
  ('train', ['MODEL_DIR = 123'], ['MODEL_DIR (trainer.train.model_dir) = 123', 'inner quotes']),
  ('train', ["MODEL_DIR = '{tmp}/a_file'"], ['is a file, not a directory']),
  ('train', ["MODEL_DIR = '{tmp}/a_file/run'"], ['cannot be created', 'a_file is a file']),
  ('train', ["INITIAL_CHECKPOINT_PATH = '{tmp}/nowhere'"], ['INITIAL_CHECKPOINT_PATH', 'nowhere']),
  ('train', ['OPTIMIZER = @optimizers.adafactor'], ['OPTIMIZER', 'note the @ and the parentheses']),
  ('train', ['optimizers.adafactor.learning_rate = 0.0'], ['optimizers.adafactor.learning_rate']),
  (
    'train',
    ['optimizers.adafactor.decay_rate = 1.5'],
    ['optimizers.adafactor.decay_rate', '[0, 1)'],
  ),
  ('train', [*ADAMW, 'optimizers.adamw.warmup_steps = -1'], ['optimizers.adamw.warmup_steps']),
  ('train', [*ADAMW, 'optimizers.adamw.b2 = 1.0'], ['optimizers.adamw.b2 = 1.0']),
  ('train', ['models.LossConfig.label_smoothing = 1.0'], ['models.LossConfig.label_smoothing']),
  ('train', ['models.LossConfig.z_loss = -1.0'], ['models.LossConfig.z_loss = -1.0']),
  ('train', ["network.T5Config.dtype = 'float64x'"], ["network.T5Config.dtype = 'float64x'"]),
  ('train', ["network.T5Config.lora_rules = [('.*query.*', 0, 1.0)]"], ['LORA_RULES rank']),
  ('train', ["network.T5Config.lora_rules = [('.*query.*', 4)]"], ['(regex, rank, alpha)']),
  ('train', ['network.T5Config.lora_dropout = 2.0'], ['LORA_DROPOUT', '[0, 1)']),
  ('train', ["trainer.train.eval_split = ''"], ['trainer.train.eval_split', 'non-empty']),
  ('train', ['TRAIN_STPES = 3'], ['TRAIN_STPES', "'TRAIN_STEPS'"]),
  ('train', ['MODEL_DIR = /tmp/run'], ['MODEL_DIR = /tmp/run', 'inner quotes']),
  ('train', ['network.T5Config.emb_dimm = 3'], ['network.T5Config.emb_dimm']),
  ('infer', ['BATCH_SIZE = 0'], ['BATCH_SIZE (batch_inference.infer.batch_size) = 0']),
  ('infer', ['batch_inference.infer.chunk_batches = 0'], ['batch_inference.infer.chunk_batches']),
  ('infer', ["inference.DecodeConfig.method = 'beam_search'"], ["'greedy', 'sample' or 'beam'"]),
  (
    'infer',
    ["inference.DecodeConfig.method = 'sample'", 'inference.DecodeConfig.num_decodes = 0'],
    ['inference.DecodeConfig.num_decodes = 0'],
  ),
  ('infer', ['inference.DecodeConfig.temperature = 0.0'], ['DecodeConfig.temperature = 0.0']),
  ('infer', ['inference.DecodeConfig.top_p = 1.5'], ['inference.DecodeConfig.top_p = 1.5']),
  ('infer', ["FROZEN_DTYPE = 'float64x'"], ['FROZEN_DTYPE (batch_inference.infer.frozen_dtype)']),
  ('infer', ["INFER_OUTPUT_DIR = '{tmp}/a_file'"], ["INFER_OUTPUT_DIR='", 'is a file']),
  ('infer', ['CHECKPOINT_PATH = None'], ['CHECKPOINT_PATH is not set']),
  ('infer', ["INPUT_FILE = '{tmp}/none.txt'"], ['INPUT_FILE=', 'does not exist']),
  ('infer', ["INPUT_FILE = '{tmp}/latin1.txt'"], ['latin1.txt:2: not UTF-8 text', '0xe9']),
  ('infer', ["INPUT_FILE = '{tmp}/broken.jsonl'"], ['broken.jsonl:2: not a JSON object']),
  ('infer', ["SPLIT = 'tset'"], ["no split 'tset'"]),
  ('infer', ['CHECKPOINT_PATH = None', "PROMPTS = '{run}'"], ["PROMPTS='", "expected {'name'"]),
  ('infer', ["ENSEMBLE_METHOD = 'average'"], ["ENSEMBLE_METHOD = 'average'", "'vote', 'score'"]),
  ('eval', ["ENSEMBLE = ['{run}', '{run}']"], ['CHECKPOINT_PATH and ENSEMBLE are set together']),
  (
    'eval',
    ['CHECKPOINT_PATH = None', "ENSEMBLE = {'ensemble': '{run}', 'b': '{run}'}"],
    ["ENSEMBLE names a member 'ensemble'"],
  ),
  ('eval', ['EVAL_OUTPUT_DIR = 5'], ['EVAL_OUTPUT_DIR (evaluation.evaluate.output_dir) = 5']),
  ('eval', ['BATCH_SIZE = -1'], ['BATCH_SIZE (evaluation.evaluate.batch_size) = -1']),
  ('eval', ['USE_CACHED_TASKS = None'], ['USE_CACHED_TASKS', 'True or False']),
  ('eval', ["TASK_FEATURE_LENGTHS = {'inputs': 'x', 'targets': 4}"], ['TASK_FEATURE_LENGTHS']),
  ('eval', ['NUM_PARTITIONS = -1'], ['NUM_PARTITIONS']),
  # Every file reader: INPUT_FILE (.txt / .jsonl; not .csv / .tsv / .json), prompt .npy
  # files (PROMPTS, ENSEMBLE, prompts.from_file), SentencePiece models, checkpoints.
  ('infer', ["INPUT_FILE = '{tmp}/empty.txt'"], ["INPUT_FILE='", "empty.txt' holds no inputs"]),
  ('infer', ["INPUT_FILE = '{tmp}/blank.jsonl'"], ["blank.jsonl' holds no inputs", 'blank lines']),
  ('infer', ["INPUT_FILE = '{tmp}/x.csv'"], ["x.csv' is a CSV file", '.txt (one input per line)']),
  ('infer', ["INPUT_FILE = '{tmp}/x.tsv'"], ["INPUT_FILE='", "x.tsv' is a TSV file"]),
  ('infer', ["INPUT_FILE = '{tmp}/alpaca.json'"], ["alpaca.json' is a JSON document"]),
  ('infer', ["INPUT_FILE = '{tmp}/bom_broken.jsonl'"], ['bom_broken.jsonl:2: not a JSON object']),
  ('infer', ["INPUT_FILE = '{tmp}'"], ["INPUT_FILE='", 'is a directory']),
  ('infer', ['CHECKPOINT_PATH = None', 'PROMPTS = {}'], ['PROMPTS is empty', 'name at least one']),
  ('infer', ['CHECKPOINT_PATH = None', 'ENSEMBLE = []'], ['ENSEMBLE is empty']),
  ('eval', ['CHECKPOINT_PATH = None', 'ENSEMBLE = []'], ['ENSEMBLE is empty']),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "PROMPTS = {'p': '{tmp}/nan.npy'}", ONE],
    ["PROMPTS['p']='", "nan.npy' holds 1 non-finite value(s) (NaN or Inf) of 128"],
  ),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "ENSEMBLE = ['{run}', '{tmp}/nan.npy']", ONE],
    ["ENSEMBLE['nan']='", 'holds 1 non-finite value(s)'],
  ),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "PROMPTS = {'p': '{tmp}/ints.npy'}", ONE],
    ["PROMPTS['p']='", 'holds a int64 array', 'a prompt is a float array'],
  ),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "PROMPTS = {'p': '{tmp}/cube.npy'}", ONE],
    ["PROMPTS['p']='", 'shape (1, 2, 3)'],
  ),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "PROMPTS = {'p': '{tmp}/not.npy'}", ONE],
    ["PROMPTS['p']='", 'is not a numpy .npy array'],
  ),
  (
    'infer',
    ['CHECKPOINT_PATH = None', "PROMPTS = {'p': '{tmp}/none.npy'}", ONE],
    ["PROMPTS['p']='", 'none.npy', 'does not exist'],
  ),
  (
    'infer',
    ['inference.DecodeConfig.temperature = 1e999'],
    ['inference.DecodeConfig.temperature = inf', 'finite number'],
  ),
  ('eval', ['inference.DecodeConfig.temperature = 1e999'], ['DecodeConfig.temperature', 'finite']),
  (
    'eval',
    ['CHECKPOINT_PATH = None', "ENSEMBLE = ['{run}', '{tmp}/nan.npy']"],
    ["ENSEMBLE['nan']='", 'holds 1 non-finite value(s)'],
  ),
  (
    'eval',
    ['CHECKPOINT_PATH = None', "ENSEMBLE = ['{tmp}/nowhere', '{run}']"],
    ["ENSEMBLE['nowhere']='", 'does not exist'],
  ),
  (
    'train',
    [FROM_FILE, "prompts.from_file.path = '{tmp}/nan.npy'"],
    ["prompts.from_file.path='", "nan.npy' holds 1 non-finite value(s)"],
  ),
  (
    'train',
    [FROM_FILE, "prompts.from_file.path = '{tmp}/a_file'"],
    ["prompts.from_file.path='", 'is not a numpy .npy array'],
  ),
  (
    'train',
    [FROM_FILE, "prompts.from_file.path = '{tmp}/none.npy'"],
    ["prompts.from_file.path='", 'does not exist'],
  ),
  ('train', [FROM_FILE, "prompts.from_file.path = '{tmp}'"], ["prompts.from_file.path='"]),
  (
    'infer',
    [ONE, "VOCABULARY_PATH = '{tmp}/a_file'"],
    ["VOCABULARY_PATH='", 'is not a SentencePiece model'],
  ),
  (
    'infer',
    [ONE, "VOCABULARY_PATH = '{tmp}/nowhere.model'"],
    ["VOCABULARY_PATH='", 'does not exist'],
  ),
  ('infer', [ONE, "VOCABULARY_PATH = '{tmp}'"], ["VOCABULARY_PATH='", 'holds no SentencePiece']),
  (
    'train',
    ["INITIAL_CHECKPOINT_PATH = '{tmp}/a_file'"],
    ["INITIAL_CHECKPOINT_PATH='", 'is not a checkpoint t5pt recognises'],
  ),
  ('infer', ["CHECKPOINT_PATH = '{tmp}/a_file'"], ["CHECKPOINT_PATH='", 'is not a checkpoint']),
  ('infer', ["BASE_CHECKPOINT_PATH = '{tmp}/nowhere'"], ["BASE_CHECKPOINT_PATH='", 'not exist']),
  ('eval', ["CHECKPOINT_PATH = '{tmp}/nowhere'"], ["CHECKPOINT_PATH='", 'does not exist']),
  # Every output path.
  ('train', ["MODEL_DIR = ''"], ['MODEL_DIR is not set']),
  ('infer', ["INFER_OUTPUT_DIR = ''"], ['INFER_OUTPUT_DIR is not set']),
  ('infer', ["INFER_OUTPUT_DIR = '{tmp}/a_file/out'"], ["INFER_OUTPUT_DIR='", 'cannot be created']),
  (
    'eval',
    ["EVAL_OUTPUT_DIR = '{tmp}/a_file'"],
    ["EVAL_OUTPUT_DIR='", 'is a file, not a directory'],
  ),
  ('eval', ["EVAL_OUTPUT_DIR = '{tmp}/a_file/sub'"], ["EVAL_OUTPUT_DIR='", 'cannot be created']),
  # Every remote path, with GCS unreachable.
  ('train', ["MODEL_DIR = 'gs://b/run'"], ["MODEL_DIR='gs://b/run': gs://b is unreachable"]),
  (
    'train',
    ["INITIAL_CHECKPOINT_PATH = 'gs://b/base'"],
    ["INITIAL_CHECKPOINT_PATH='gs://b/base': gs://b is unreachable", 'To fix'],
  ),
  ('infer', ["INFER_OUTPUT_DIR = 'gs://b/out'"], ["INFER_OUTPUT_DIR='gs://b/out': gs://b is unre"]),
  (
    'infer',
    ["INPUT_FILE = 'gs://b/in.txt'"],
    ["INPUT_FILE='gs://b/in.txt': gs://b is unreachable"],
  ),
  (
    'infer',
    ["CHECKPOINT_PATH = 'gs://b/run'"],
    ["CHECKPOINT_PATH='gs://b/run': gs://b is unreach"],
  ),
  (
    'eval',
    ["EVAL_OUTPUT_DIR = 'gs://b/eval'"],
    ["EVAL_OUTPUT_DIR='gs://b/eval': gs://b is unreach"],
  ),
  # Other values.
  (
    'train',
    ["TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 10}"],
    ["TASK_FEATURE_LENGTHS['inputs']=8 leaves no room", 'at least 9'],
  ),
  ('train', ['EVAL_PERIOD = 1.5'], ['EVAL_PERIOD (trainer.train.eval_period) = 1.5']),
  ('train', ["INITIAL_CHECKPOINT_PATH = ''"], ['INITIAL_CHECKPOINT_PATH (trainer.train.init']),
  (
    'train',
    ["MIXTURE_OR_TASK_MODULE = ['tasks.synthetic', 5]"],
    ['MIXTURE_OR_TASK_MODULE (trainer.train.mixture_or_task_module)', 'module name'],
  ),
  ('infer', ["TASK_FEATURE_LENGTHS = {'inputs': 4, 'targets': 4}"], ["['inputs']=4 leaves no"]),
  ('infer', ["SPLIT = ''"], ['SPLIT (batch_inference.infer.split)', 'non-empty']),
  ('eval', ["MIXTURE_OR_TASK_NAME = 'nope_task'"], ["MIXTURE_OR_TASK_NAME='nope_task' is not a"]),
]

ENTRY_POINTS = {
  'train': ('gin/t5_1_1_tiny_prompt.gin', "MODEL_DIR = '{tmp}/out'", trainer.train),
  'infer': ('infer.gin', "INFER_OUTPUT_DIR = '{tmp}/out'", batch_inference.infer),
  'eval': ('eval.gin', "EVAL_OUTPUT_DIR = '{tmp}/out'", evaluation.evaluate),
}


def _user_files(directory) -> list[str]:
  """Writes the files the cases name; returns their names."""
  (directory / 'a_file').write_text('not a directory')
  (directory / 'latin1.txt').write_bytes('first line\ncaf\xe9 au lait\n'.encode('latin-1'))
  (directory / 'broken.jsonl').write_text('{"inputs": "a"}\n{"inputs": \n')
  (directory / 'empty.txt').write_text('')
  (directory / 'blank.jsonl').write_bytes(b'\n  \r\n')
  (directory / 'x.csv').write_text('inputs,targets\ncab,c\n')
  (directory / 'x.tsv').write_text('inputs\ttargets\ncab\tc\n')
  (directory / 'alpaca.json').write_text('[{"instruction": "a", "input": "", "output": "b"}]')
  (directory / 'bom_broken.jsonl').write_bytes('\ufeff{"inputs": "a"}\r\n{"inputs": \r\n'.encode())
  (directory / 'one.txt').write_text('cab\n')
  nan = np.zeros((8, 16), np.float32)
  nan[2, 3] = np.nan
  np.save(directory / 'nan.npy', nan)
  np.save(directory / 'ints.npy', np.ones((8, 16), np.int64))
  np.save(directory / 'cube.npy', np.ones((1, 2, 3), np.float32))
  (directory / 'not.npy').write_text('hello')
  return sorted(os.listdir(directory))


def _outcome(entry: str, bindings, run: str, tmp) -> str:
  """The message of the UserError that `entry` raises under `bindings`."""
  gin_file, output, main = ENTRY_POINTS[entry]
  fill = lambda text: text.replace('{run}', run).replace('{tmp}', str(tmp))
  bindings = [fill(b) for b in bindings]
  if entry != 'train':
    bindings = [f"CHECKPOINT_PATH = '{run}'", *bindings]
  gin.clear_config()
  try:
    with pytest.raises(UserError) as error:
      gin_utils.parse([gin_file], [fill(output), *bindings])
      main(progress_bar=False) if entry != 'eval' else main()
  finally:
    gin.clear_config()
  return str(error.value).split('\n  In call to configurable')[0]


@pytest.mark.parametrize(
  'entry,bindings,fragments', CASES, ids=[f'{e}:{"; ".join(b)}' for e, b, _ in CASES]
)
def test_bad_value_gets_one_clear_message_and_writes_nothing(
  entry, bindings, fragments, tmp_path, prompt_run, monkeypatch
):
  files = _user_files(tmp_path)
  if any('gs://' in b for b in bindings):
    with socket.socket() as closed:  # a port nothing listens on
      closed.bind(('127.0.0.1', 0))
      port = closed.getsockname()[1]
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{port}')
    monkeypatch.setattr(fs, '_gcs_reachable', set())
  run_files = sorted(os.listdir(prompt_run))
  message = _outcome(entry, bindings, prompt_run, tmp_path)
  for fragment in fragments:
    assert fragment in message, message
  assert '\n' not in message.strip(), message
  assert not (tmp_path / 'out').exists(), 'nothing may be written'
  assert sorted(os.listdir(tmp_path)) == files
  assert sorted(os.listdir(prompt_run)) == run_files


COMMAND_LINE_CASES = [
  ('t5pt.export', ['--model_dir={tmp}/nowhere', '--prompt_npy={tmp}/p.npy'], ['nowhere']),
  ('t5pt.export', ['--model_dir={run}'], ['--prompt_npy', '--hf_dir', '--peft_dir']),
  ('t5pt.peft_import', ['--peft_dir={tmp}', '--base={tmp}', '--model_dir={tmp}/m'], ['--peft_dir']),
  ('tasks.show', ['no_such_task'], ["'no_such_task'"]),
  ('tasks.show', [], ['give one task or mixture name']),
  ('tasks.show', ['--tsk=glue'], ["Unknown command line flag 'tsk'", '--helpfull']),
  ('t5pt.train', ['--gin_file=gin/t5_1_1_tiny_prompt.gin', '--num_steps=3'], ['num_steps']),
  (
    't5pt.plan',
    ['--gin_file=gin/t5_1_1_tiny_prompt.gin', '--devices=3', '--mesh=3x1'],
    ['BATCH_SIZE=32 must be a positive multiple', '--mesh=1x3'],
  ),
  (
    't5pt.plan',
    ['--gin_file=gin/t5_1_1_tiny_prompt.gin', '--devices=4', '--mesh=4x1', '--gin.BATCH_SIZE=6'],
    ['BATCH_SIZE=6', '--mesh=2x2'],
  ),
  (
    't5pt.export',
    ['--model_dir={run}', '--prompt_npy={run}/config.gin/p.npy'],
    ['--prompt_npy=', 'cannot be created', 'config.gin is a file, not a directory'],
  ),
  ('t5pt.export', ['--model_dir={run}', '--prompt_npy={tmp}', '--overwrite'], ['is a directory']),
  (
    't5pt.export',
    ['--model_dir={run}', '--prompt_npy={run}/config.gin', '--overwrite'],
    ['config.gin', 'already exists and is not a .npy file'],
  ),
  (
    't5pt.export',
    ['--model_dir={run}', '--peft_dir={run}', '--overwrite'],
    ['--peft_dir=', 'would replace --model_dir='],
  ),
  (
    't5pt.export',
    ['--model_dir={run}', '--hf_dir={tmp}/out', '--peft_dir={tmp}/out/peft'],
    ['--hf_dir=', '--peft_dir=', 'overlap'],
  ),
  (
    't5pt.export',
    ['--model_dir={run}', '--prompt_npy={tmp}/p.npy', '--peft_dir=gin', '--overwrite'],
    ["--peft_dir='gin' already exists and holds", 'it is not an adapter t5pt.export wrote'],
  ),
  (
    't5pt.peft_import',
    ['--peft_dir={tmp}', '--base={tmp}', '--model_dir={run}', '--overwrite'],
    ['--model_dir=', 'it is not a run t5pt.peft_import wrote'],
  ),
  (
    't5pt.peft_import',
    ['--peft_dir={tmp}', '--base={tmp}', '--model_dir={run}/config.gin/m'],
    ['--model_dir=', 'cannot be created', 'config.gin is a file, not a directory'],
  ),
  (
    't5pt.export',
    ['--model_dir=gs://b/run', '--prompt_npy={tmp}/p.npy'],
    ["gs://b is unreachable", 'STORAGE_EMULATOR_HOST'],
  ),
]


@pytest.mark.slow
@pytest.mark.parametrize('module,args,fragments', COMMAND_LINE_CASES)
def test_bad_command_line_exits_2_with_one_message(module, args, fragments, tmp_path, prompt_run):
  args = [a.format(run=prompt_run, tmp=tmp_path) for a in args]
  run_files = sorted(os.listdir(prompt_run))
  with socket.socket() as closed:  # for gs:// paths: a port nothing listens on
    closed.bind(('127.0.0.1', 0))
    env = {**os.environ, 'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{closed.getsockname()[1]}'}
  result = run_module(module, *args, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-2000:]
  assert os.listdir(tmp_path) == []
  assert sorted(os.listdir(prompt_run)) == run_files


def test_train_command_line_names_the_fix_for_unquoted_strings(tmp_path):
  result = run_module(
    't5pt.train', '--gin_file=gin/t5_1_1_tiny_prompt.gin', f'--gin.MODEL_DIR={tmp_path}/run'
  )
  assert result.returncode == 2 and 'inner quotes' in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()
