"""Non-finite numbers: every array a user hands in (prompt .npy files, PROMPTS / ENSEMBLE
entries, prompts.from_file, imported PEFT adapters) is checked for NaN and Inf, a float
dtype and its rank; every JSON file t5pt writes is strict JSON."""

import json
import math

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import seqio
import tensorflow as tf

from t5pt.checkpoints import base_readers
from t5pt.checkpoints import opening
from t5pt.checkpoints import peft_importing
from t5pt.model import prompts
from t5pt.runtime import errors
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError
from t5pt.serving import infer_io
from t5pt.serving import prompt_bank
from t5pt.serving import seqio_outputs
from tests.test_infer import infer_in_process


def _strict_json(text: str):
  """json.loads that fails on NaN, Infinity and -Infinity (which are not JSON)."""

  def refuse(constant):
    raise AssertionError(f'{constant} written into JSON: {text[:200]}')

  return json.loads(text, parse_constant=refuse)


def _message(call) -> str:
  with pytest.raises(UserError) as error:
    call()
  return str(error.value)


@pytest.fixture
def nan_npy(tmp_path) -> str:
  values = np.zeros((4, 8), np.float32)
  values[1, 2], values[3, 0] = np.nan, np.inf
  path = str(tmp_path / 'nan.npy')
  np.save(path, values)
  return path


def test_a_prompt_holding_nan_or_inf_is_refused_naming_the_setting_file_and_count(
  nan_npy, tmp_path
):
  message = _message(lambda: prompt_bank.read_member('mine', nan_npy, 'PROMPTS'))
  assert f"PROMPTS['mine']={nan_npy!r} holds 2 non-finite value(s) (NaN or Inf) of 32" in message
  assert 'index (1, 2)' in message
  message = _message(lambda: prompt_bank.read_member('nan', nan_npy, 'ENSEMBLE'))
  assert "ENSEMBLE['nan']=" in message and '2 non-finite' in message
  message = _message(lambda: prompts.from_file(None, (4, 8), path=nan_npy))
  assert f'prompts.from_file.path={nan_npy!r} holds 2 non-finite value(s)' in message

  # Finite as float64, but not as the float32 the prompt becomes.
  huge = str(tmp_path / 'huge.npy')
  np.save(huge, np.full((4, 8), 1e300))
  assert '32 non-finite' in _message(lambda: prompts.from_file(None, (4, 8), path=huge))

  fine = str(tmp_path / 'fine.npy')
  np.save(fine, np.ones((4, 8), np.float16))
  member = prompt_bank.read_member('fine', fine, 'PROMPTS')
  assert member.prompt.dtype == np.float32 and member.prompt.shape == (4, 8)
  assert prompts.from_file(None, (4, 8), path=fine).dtype == np.float32


@pytest.mark.parametrize(
  'name, save, fragment',
  [
    ('ints.npy', lambda p: np.save(p, np.ones((4, 8), np.int64)), 'holds a int64 array'),
    ('cube.npy', lambda p: np.save(p, np.ones((4, 8, 1), np.float32)), 'shape (4, 8, 1)'),
    ('words.npy', lambda p: np.save(p, np.array([['a'] * 8] * 4)), '<U1 array'),
    ('pickled.npy', lambda p: np.save(p, np.array([{'a': 1}], object)), 'not a numpy .npy'),
    ('text.npy', lambda p: open(p, 'w').write('1 2 3\n'), 'not a numpy .npy array'),
    ('both.npy', lambda p: np.savez(open(p, 'wb'), a=np.ones((4, 8))), 'an .npz archive'),
  ],
)
def test_a_prompt_file_that_is_not_a_float_matrix_is_refused(tmp_path, name, save, fragment):
  path = str(tmp_path / name)
  save(path)
  message = _message(lambda: prompt_bank.read_member('p', path, 'PROMPTS'))
  assert f"PROMPTS['p']={path!r}" in message and fragment in message, message
  message = _message(lambda: prompts.from_file(None, (4, 8), path=path))
  assert f'prompts.from_file.path={path!r}' in message and fragment in message, message


def test_a_nan_prompt_in_prompts_or_ensemble_stops_infer_before_the_base_loads(
  prompt_run, nan_npy, tmp_path, monkeypatch
):
  def loaded(*args, **kwargs):
    raise AssertionError('the base was loaded before the inputs were checked')

  monkeypatch.setattr(base_readers.BaseCheckpoint, 'load_model', loaded)
  monkeypatch.setattr(opening, 'load', loaded)
  (tmp_path / 'in.jsonl').write_text('{"inputs": "cab", "prompt": "max"}\n')
  (tmp_path / 'in.txt').write_text('cab\n')
  for macro, entries, source in (
    ('PROMPTS', {'max': prompt_run, 'nan': nan_npy}, 'in.jsonl'),
    ('ENSEMBLE', [prompt_run, nan_npy], 'in.txt'),
  ):
    with pytest.raises(UserError, match=rf"{macro}\['nan'\]=.*holds 2 non-finite"):
      infer_in_process(tmp_path / 'out', INPUT_FILE=str(tmp_path / source), **{macro: entries})
    assert not (tmp_path / 'out').exists()
  with pytest.raises(
    UserError, match=r'inference.DecodeConfig.temperature = inf: must be a finite number'
  ):
    infer_in_process(
      tmp_path / 'out',
      ['inference.DecodeConfig.temperature = 1e999'],
      CHECKPOINT_PATH=prompt_run,
    )


LORA_A = 'base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight'
LORA_B = 'base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight'


def _adapter(directory, a, b=None, torch_bin=False) -> str:
  directory.mkdir(exist_ok=True)
  (directory / 'adapter_config.json').write_text(json.dumps({'peft_type': 'LORA', 'r': 2}))
  b = np.zeros((16, 2), np.float32) if b is None else b
  if torch_bin:
    import torch  # pylint: disable=import-outside-toplevel

    torch.save({LORA_A: torch.tensor(a), LORA_B: torch.tensor(b)}, directory / 'adapter_model.bin')
  else:
    safetensors.numpy.save_file(
      {LORA_A: a, LORA_B: b}, str(directory / 'adapter_model.safetensors')
    )
  return str(directory)


def test_adapter_tensors_holding_nan_or_inf_or_not_float_are_refused(tmp_path):
  good = np.ones((2, 16), np.float32)
  _, weights = peft_importing.read_adapter(_adapter(tmp_path / 'good', good))
  assert weights[LORA_A].dtype == np.float32 and np.array_equal(weights[LORA_A], good)
  _, weights = peft_importing.read_adapter(
    _adapter(tmp_path / 'bf16', good.astype(ml_dtypes.bfloat16))
  )
  assert weights[LORA_A].dtype == np.float32 and np.array_equal(weights[LORA_A], good)

  bad = good.copy()
  bad[0, 3] = np.nan
  folder = _adapter(tmp_path / 'nan', bad)
  message = _message(lambda: peft_importing.read_adapter(folder))
  assert f'{folder}/adapter_model.safetensors, tensor {LORA_A!r},' in message
  assert 'holds 1 non-finite value(s) (NaN or Inf) of 32' in message

  folder = _adapter(
    tmp_path / 'inf_bf16', good.astype(ml_dtypes.bfloat16), np.full((16, 2), np.inf)
  )
  assert f'tensor {LORA_B!r}, holds 32 non-finite' in _message(
    lambda: peft_importing.read_adapter(folder)
  )
  folder = _adapter(tmp_path / 'ints', np.ones((2, 16), np.int32))
  assert 'is int32 (2, 16); LoRA weights are float' in _message(
    lambda: peft_importing.read_adapter(folder)
  )
  folder = _adapter(tmp_path / 'bin', bad, torch_bin=True)
  message = _message(lambda: peft_importing.read_adapter(folder))
  assert f'{folder}/adapter_model.bin, tensor {LORA_A!r}, holds 1 non-finite' in message
  (tmp_path / 'bin' / 'adapter_model.bin').write_bytes(b'not a pickle')
  assert 'is not a readable PyTorch state dict' in _message(
    lambda: peft_importing.read_adapter(folder)
  )

  # Refused before anything is written.
  model_dir = tmp_path / 'run'
  folder = _adapter(tmp_path / 'nan', bad)
  with pytest.raises(UserError, match='non-finite'):
    peft_importing.import_adapter(folder, str(tmp_path / 'good'), str(model_dir))
  assert not model_dir.exists()


def test_write_json_refuses_nan_and_inf(tmp_path):
  for value in (math.nan, math.inf, -math.inf):
    path = tmp_path / 'x.json'
    with pytest.raises(ValueError, match=r'x.json: Out of range float values'):
      fs.write_json(path, {'nested': [1.0, value]})
    assert not path.exists()
  fs.write_json(tmp_path / 'x.json', {'a': 1.5})
  assert _strict_json((tmp_path / 'x.json').read_text()) == {'a': 1.5}


def test_eval_outputs_write_null_for_non_finite_values(tmp_path):
  logger = seqio_outputs.OutputLogger(str(tmp_path), tensorboard=False)
  dataset = tf.data.Dataset.from_tensor_slices({'inputs_pretokenized': [b'a', b'b', b'c']})
  logger(
    'task',
    3,
    {'pearson': math.nan, 'accuracy': 50.0},
    dataset,
    {'prediction': [math.nan, np.float32(1.5), np.array([np.inf, 2.0])]},
    [1.0, -math.inf, 'x'],
  )
  lines = [_strict_json(l) for l in (tmp_path / 'task-000003.jsonl').read_text().splitlines()]
  assert [(l['target'], l['prediction']) for l in lines] == [
    (1.0, None),
    (None, 1.5),
    ('x', [None, 2.0]),
  ]
  metrics = _strict_json((tmp_path / 'task-metrics.jsonl').read_text())
  assert metrics == {'step': 3, 'pearson': None, 'accuracy': 50.0}


def test_infer_writes_null_for_a_minus_inf_score_and_stops_at_nan(tmp_path):
  vocabulary = seqio.ByteVocabulary()
  examples = [{'inputs': 'cab'}, {'inputs': 'hgf', 'targets': 'h'}]
  tokens = np.array([[[102, 1], [103, 1]], [[107, 1], [0, 0]]])
  scores = np.array([[-0.5, -np.inf], [-np.inf, -1.0]])
  lines = infer_io.output_lines(examples, tokens, scores, vocabulary)
  assert [(l['score'], l['scores']) for l in lines] == [(-0.5, [-0.5, None]), (None, [None, -1.0])]
  output = infer_io.ChunkedOutput(str(tmp_path), 'x', {'batch_size': 2})
  output.write_chunk(0, lines)
  written = (tmp_path / 'x.jsonl.parts' / 'chunk-00000.jsonl').read_text().splitlines()
  assert [_strict_json(l)['score'] for l in written] == [-0.5, None]

  scores[1, 1] = np.nan
  with pytest.raises(errors.TrainingStopped, match=r"input 'hgf' as nan.*FROZEN_DTYPE='float16'"):
    infer_io.output_lines(examples, tokens, scores, vocabulary)
  with pytest.raises(ValueError, match='Out of range float'):
    output.write_chunk(1, [{'score': math.nan}])
  assert not (tmp_path / 'x.jsonl.parts' / 'chunk-00001.jsonl').exists()
