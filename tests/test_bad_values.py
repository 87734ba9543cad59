"""A catalogue of bad values a user can set, each of which must end in one clear message
naming what the user typed, before anything is written (no traceback, no output)."""

import os

import gin
import pytest

from t5pt import batch_inference
from t5pt import evaluation
from t5pt import gin_utils
from t5pt import trainer
from t5pt.errors import UserError
from tests.conftest import run_module

ADAMW = ['OPTIMIZER = @optimizers.adamw()', 'optimizers.adamw.decay_steps = 100']

# (entry point, gin bindings, fragments the message must hold). `{run}`: a trained prompt
# run; `{tmp}`: the test's directory, holding `a_file`, `latin1.txt` and `broken.jsonl`.
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
]

ENTRY_POINTS = {
  'train': ('gin/t5_1_1_tiny_prompt.gin', "MODEL_DIR = '{tmp}/out'", trainer.train),
  'infer': ('infer.gin', "INFER_OUTPUT_DIR = '{tmp}/out'", batch_inference.infer),
  'eval': ('eval.gin', "EVAL_OUTPUT_DIR = '{tmp}/out'", evaluation.evaluate),
}


def _user_files(directory) -> None:
  (directory / 'a_file').write_text('not a directory')
  (directory / 'latin1.txt').write_bytes('first line\ncaf\xe9 au lait\n'.encode('latin-1'))
  (directory / 'broken.jsonl').write_text('{"inputs": "a"}\n{"inputs": \n')


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
  entry, bindings, fragments, tmp_path, prompt_run
):
  _user_files(tmp_path)
  message = _outcome(entry, bindings, prompt_run, tmp_path)
  for fragment in fragments:
    assert fragment in message, message
  assert not (tmp_path / 'out').exists(), 'nothing may be written'
  assert sorted(os.listdir(tmp_path)) == ['a_file', 'broken.jsonl', 'latin1.txt']


COMMAND_LINE_CASES = [
  ('t5pt.export', ['--model_dir={tmp}/nowhere', '--prompt_npy={tmp}/p.npy'], ['nowhere']),
  ('t5pt.export', ['--model_dir={run}'], ['--prompt_npy', '--hf_dir', '--peft_dir']),
  ('t5pt.peft_import', ['--peft_dir={tmp}', '--base={tmp}', '--model_dir={tmp}/m'], ['--peft_dir']),
  ('tasks.show', ['no_such_task'], ["'no_such_task'"]),
  ('tasks.show', [], ['give one task or mixture name']),
  ('tasks.show', ['--tsk=glue'], ["Unknown command line flag 'tsk'", '--helpfull']),
  ('t5pt.train', ['--gin_file=gin/t5_1_1_tiny_prompt.gin', '--num_steps=3'], ['num_steps']),
]


@pytest.mark.slow
@pytest.mark.parametrize('module,args,fragments', COMMAND_LINE_CASES)
def test_bad_command_line_exits_2_with_one_message(module, args, fragments, tmp_path, prompt_run):
  args = [a.format(run=prompt_run, tmp=tmp_path) for a in args]
  result = run_module(module, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-2000:]
  assert os.listdir(tmp_path) == []


def test_train_command_line_names_the_fix_for_unquoted_strings(tmp_path):
  result = run_module(
    't5pt.train', '--gin_file=gin/t5_1_1_tiny_prompt.gin', f'--gin.MODEL_DIR={tmp_path}/run'
  )
  assert result.returncode == 2 and 'inner quotes' in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()
