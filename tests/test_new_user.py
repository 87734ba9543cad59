"""A new user's first contact, through the commands of README.md and docs/tasks.md only: their
own module in their own working directory (outside the repository) registers a TSV whose 0/1
labels are mapped to words and an Alpaca JSON with an extra key; they train a few steps on
both, decode a file with nothing but CHECKPOINT_PATH, evaluate and export."""

import glob
import hashlib
import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest

from t5pt.runtime import data
from t5pt.runtime.errors import UserError
from tests.conftest import REPO, run_module

MY_TASKS = '''
import seqio
from tasks import files, mixtures

BYTES = seqio.ByteVocabulary()  # the tiny base's vocabulary
files.register_file_task(
    'my_sentiment', path='data/sentiment.tsv', split_ratio={'train': 0.75, 'validation': 0.25},
    inputs_field='sentence', targets_field='label',
    targets_map={'0': 'negative', '1': 'positive'}, vocabulary=BYTES)
files.register_file_task(
    'my_alpaca', path='data/alpaca.json', split_ratio={'train': 0.5, 'validation': 0.5},
    alpaca_prompt='stanford', vocabulary=BYTES)
mixtures.register_weighted_mixture('my_mix', {'my_sentiment': 1.0, 'my_alpaca': 1.0})
'''


def _write_user_files(work) -> None:
  (work / 'data').mkdir()
  rows = ['sentence\tlabel'] + [
    f'{"a fine film" if i % 2 else "a dull film"} number {i}\t{i % 2}' for i in range(16)
  ]
  (work / 'data' / 'sentiment.tsv').write_text('\n'.join(rows) + '\n')
  alpaca = [
    {
      'instruction': f'Name a colour, {i}.',
      'input': 'warm' if i % 2 else '',
      'output': 'red',
      'example_input': 'ignored by the default join',
    }
    for i in range(8)
  ]
  (work / 'data' / 'alpaca.json').write_text(json.dumps(alpaca))
  (work / 'my_tasks.py').write_text(MY_TASKS)
  (work / 'new.jsonl').write_text('{"inputs": "a fine film indeed"}\n{"inputs": "so dull"}\n')


def _venv_is_current() -> bool:
  """Whether launch.sh would use this interpreter's venv as is (it never installs here)."""
  stamp = os.path.join(sys.prefix, '.requirements-test.sha256')
  files = sorted(glob.glob(os.path.join(REPO, 'requirements*.txt')))
  want = hashlib.sha256(b''.join(open(f, 'rb').read() for f in files)).hexdigest()
  return os.path.exists(stamp) and open(stamp).read().strip() == want


def _launch(work, *args) -> subprocess.CompletedProcess:
  env = {**os.environ, 'T5PT_VENV': sys.prefix}
  env.pop('PYTHONPATH', None)  # As a user's shell has it: launch.sh sets what it needs.
  return subprocess.run(
    [*args], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
  )


@pytest.mark.slow
@pytest.mark.skipif(
  not _venv_is_current(), reason='launch.sh would install a venv (run the suite via launch.sh)'
)
def test_walk_through_from_the_users_own_directory(base_checkpoint, tmp_path):
  work = tmp_path / 'work'  # Outside the repository; relative paths resolve here.
  work.mkdir()
  _write_user_files(work)
  launch, infer = os.path.join(REPO, 'launch.sh'), os.path.join(REPO, 'infer.sh')

  train = _launch(
    work,
    launch,
    'train',
    '--gin_file=gin/checkpoint_prompt.gin',
    f'--gin.INITIAL_CHECKPOINT_PATH={base_checkpoint!r}',
    "--gin.MODEL_DIR='runs/mine'",
    "--gin.MIXTURE_OR_TASK_NAME='my_mix'",
    "--gin.MIXTURE_OR_TASK_MODULE='my_tasks'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 12}",
    '--gin.PROMPT_LENGTH=4',
    '--gin.TRAIN_STEPS=3',
    '--gin.BATCH_SIZE=4',
    '--gin.EVAL_PERIOD=3',
    '--gin.CHECKPOINT_PERIOD=3',
    '--gin.INFER_EVAL=False',  # t5pt.eval decodes below.
  )
  assert train.returncode == 0, train.stderr[-3000:]
  assert (work / 'runs' / 'mine' / 'checkpoint_3').is_dir()
  out = train.stdout + train.stderr
  # Stanford-prompted Alpaca inputs overflow 44 byte positions: the run says how much.
  assert 'data: inputs longer than 44 tokens (48 less the 4-position prompt)' in out, out
  assert 'data: targets fit 12 tokens in all' in out, out
  assert '%' in out.split('eval @ step 3:')[1].splitlines()[0]

  decoded = _launch(
    work,
    infer,
    "--gin.CHECKPOINT_PATH='runs/mine'",
    "--gin.INFER_OUTPUT_DIR='out'",
    "--gin.INPUT_FILE='new.jsonl'",
  )
  assert decoded.returncode == 0, decoded.stderr[-3000:]
  lines = [json.loads(l) for l in (work / 'out' / 'new-jsonl.jsonl').read_text().splitlines()]
  assert [l['inputs'] for l in lines] == ['a fine film indeed', 'so dull']

  evaluated = _launch(
    work, launch, 'eval', "--gin.CHECKPOINT_PATH='runs/mine'", "--gin.EVAL_OUTPUT_DIR='out/eval'"
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'exact_match=' in evaluated.stdout + evaluated.stderr
  assert list((work / 'out' / 'eval').glob('my_sentiment-metrics.jsonl'))

  exported = _launch(work, launch, 'export', '--model_dir=runs/mine', '--prompt_npy=out/prompt.npy')
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert np.load(work / 'out' / 'prompt.npy').shape == (4, 128)
  assert not os.path.exists(os.path.join(REPO, 'runs', 'mine'))
  assert not os.path.exists(os.path.join(REPO, 'out'))


def test_a_module_that_is_not_importable_names_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match=rf"'my_missing_tasks'.*working directory \({tmp_path}\)"):
    data.import_task_modules('my_missing_tasks')


def test_a_failing_import_inside_the_module_is_reported_as_such(tmp_path, monkeypatch):
  (tmp_path / 'my_broken_tasks.py').write_text('import no_such_dependency\n')
  (tmp_path / 'my_typo_tasks.py').write_text('def f(:\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(UserError, match="'my_broken_tasks' failed to import: ModuleNotFound") as e:
    data.import_task_modules('my_broken_tasks')
  assert f'{tmp_path}/my_broken_tasks.py", line 1, in <module>' in str(e.value)
  assert "No module named 'no_such_dependency'" in str(e.value)
  with pytest.raises(UserError, match=r'my_typo_tasks.py:1: .* has a syntax error'):
    data.import_task_modules(['my_typo_tasks'])


def test_an_error_raised_in_a_library_the_module_calls_shows_the_users_call(tmp_path, monkeypatch):
  (tmp_path / 'my_settings_tasks.py').write_text('import json\nSETTINGS = json.loads("{")\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(UserError) as e:
    data.import_task_modules('my_settings_tasks')
  frames = [line for line in str(e.value).splitlines() if line.startswith('  File ')]
  assert frames == [f'  File "{tmp_path}/my_settings_tasks.py", line 2, in <module>']
  assert str(e.value).endswith(
    'JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)'
  )
  assert len(traceback.extract_tb(e.value.__cause__.__traceback__)) > 2  # importlib, json


MY_BUGGY_TASKS = """
import seqio


def vocabulary():
  return seqio.ByteVocabulary(extra_ids=1 / 0)


BYTES = vocabulary()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
  'source, error',
  [
    (MY_BUGGY_TASKS, 'ZeroDivisionError: division by zero'),
    ('import seqio\nseqio.TaskRegistry.add(NAME)\n', "NameError: name 'NAME' is not defined"),
  ],
  ids=['zero_division', 'name_error'],
)
def test_an_error_in_the_users_task_module_shows_their_frames_only(source, error, tmp_path):
  """The user's bug: one t5pt line naming the module, then a traceback of the user's file
  alone (no t5pt, gin, seqio or importlib frames); exit 2, nothing written."""
  (tmp_path / 'my_tasks.py').write_text(source)
  result = run_module(
    't5pt.train',
    '--gin_file=gin/t5_1_1_tiny_prompt.gin',
    f"--gin.MODEL_DIR='{tmp_path}/run'",
    "--gin.MIXTURE_OR_TASK_MODULE='my_tasks'",
    cwd=str(tmp_path),
  )
  assert result.returncode == 2, result.stderr[-3000:]
  message = result.stderr[result.stderr.index('t5pt: error: ') :]
  assert message.startswith("t5pt: error: MIXTURE_OR_TASK_MODULE='my_tasks' failed to import: "), (
    message
  )
  assert 'while importing it' in message and message.rstrip().endswith(error), message
  frames = [line for line in message.splitlines() if line.startswith('  File ')]
  assert frames and all(f'"{tmp_path}/my_tasks.py"' in line for line in frames), message
  assert 'Traceback' not in result.stderr and result.stderr.count('t5pt: error') == 1
  assert os.listdir(tmp_path) == ['my_tasks.py']
