"""Batch inference (t5pt.infer): order, files, resume after interruption, rank classification."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import gin
from t5pt.checkpoints import base_readers
from t5pt.checkpoints import opening
from t5pt.model import models
from t5pt.runtime import data
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.serving import batch_inference
from t5pt.serving import infer_io
from t5pt.serving import inference

TASK = 'synthetic_heldout_max'
OUTPUT_NAME = f'{TASK}-validation.jsonl'


def infer_in_process(output_dir, bindings=(), **macros) -> str:
  gin.clear_config()
  gin_utils.parse(
    ['gin/infer.gin'],
    [f'INFER_OUTPUT_DIR = {str(output_dir)!r}']
    + [f'{k} = {v!r}' for k, v in macros.items()]
    + list(bindings),
  )
  try:
    return batch_inference.infer(progress_bar=False)
  finally:
    gin.clear_config()


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def reference_output(prompt_run, tmp_path_factory) -> str:
  """An uninterrupted run over the run's own task (its validation split)."""
  return infer_in_process(
    tmp_path_factory.mktemp('reference'), CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16
  )


def test_task_split_is_decoded_in_order(reference_output, prompt_run):
  assert os.path.basename(reference_output) == OUTPUT_NAME
  lines = _read(reference_output)
  ds = seqio.get_mixture_or_task(TASK).get_dataset(
    {'inputs': 16, 'targets': 10}, split='validation', shuffle=False
  )
  expected = [ex['inputs_pretokenized'].decode() for ex in ds.as_numpy_iterator()]
  assert [l['inputs'] for l in lines] == expected
  assert all(set(l) == {'inputs', 'prediction', 'score', 'targets'} for l in lines)
  assert all(l['score'] <= 0 for l in lines)

  # The file says what decoding the loaded model directly says.
  model = opening.load(prompt_run)
  vocabulary = seqio.ByteVocabulary()
  tokens = np.zeros((4, 16), np.int32)
  for i, text in enumerate(expected[:4]):
    ids = vocabulary.encode(text) + [1]
    tokens[i, : len(ids)] = ids
  out, _ = inference.predict_batch(
    models.EncoderDecoderModel(model.config), model.params, jnp.asarray(tokens), 10
  )
  direct = [vocabulary.decode([t for t in row if t not in (0, 1)]) for row in np.asarray(out)[:, 0]]
  assert [l['prediction'] for l in lines[:4]] == direct


def test_interrupted_run_resumes_without_duplicate_or_missing_lines(
  prompt_run, reference_output, tmp_path, monkeypatch
):
  real_write = infer_io.ChunkedOutput.write_chunk

  def write_two_then_die(self, index, lines):
    if index == 2:
      raise KeyboardInterrupt('simulated interruption')
    real_write(self, index, lines)

  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', write_two_then_die)
  bindings = ['batch_inference.infer.chunk_batches = 2']
  with pytest.raises(KeyboardInterrupt):
    infer_in_process(tmp_path, bindings, CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16)
  assert not (tmp_path / OUTPUT_NAME).exists()  # Never half-written.
  parts = sorted(os.listdir(tmp_path / f'{OUTPUT_NAME}.parts'))
  assert parts == ['chunk-00000.jsonl', 'chunk-00001.jsonl', 'settings.json']

  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', real_write)
  resumed = infer_in_process(tmp_path, bindings, CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16)
  with open(resumed) as a, open(reference_output) as b:
    assert a.read() == b.read()
  assert os.listdir(tmp_path) == [OUTPUT_NAME]


def test_resume_with_other_settings_is_refused(prompt_run, tmp_path, monkeypatch):
  monkeypatch.setattr(
    infer_io.ChunkedOutput,
    'write_chunk',
    lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()),
  )
  with pytest.raises(KeyboardInterrupt):
    infer_in_process(tmp_path, CHECKPOINT_PATH=prompt_run, BATCH_SIZE=16)
  monkeypatch.undo()
  with pytest.raises(UserError, match='partial run with other settings'):
    infer_in_process(tmp_path, CHECKPOINT_PATH=prompt_run, BATCH_SIZE=8)


def test_text_and_jsonl_input_files(prompt_run, tmp_path):
  (tmp_path / 'inputs.txt').write_text('cab\nhgf\n\nabc\n')
  # Only CHECKPOINT_PATH: the run's recorded task tokenizes the file (a byte vocabulary,
  # which no SentencePiece file could stand in for).
  txt = _read(
    infer_in_process(
      tmp_path / 'out',
      CHECKPOINT_PATH=prompt_run,
      INPUT_FILE=str(tmp_path / 'inputs.txt'),
      BATCH_SIZE=2,
    )
  )
  assert [l['inputs'] for l in txt] == ['cab', 'hgf', 'abc']
  (tmp_path / 'inputs.jsonl').write_text('{"inputs": "cab", "targets": "c"}\n{"inputs": "hgf"}\n')
  jsonl = _read(
    infer_in_process(
      tmp_path / 'out',
      CHECKPOINT_PATH=prompt_run,
      INPUT_FILE=str(tmp_path / 'inputs.jsonl'),
      MIXTURE_OR_TASK_NAME=TASK,
      BATCH_SIZE=2,
    )
  )
  assert jsonl[0]['targets'] == 'c' and 'targets' not in jsonl[1]
  assert [l['prediction'] for l in jsonl] == [l['prediction'] for l in txt[:2]]

  (tmp_path / 'bad.jsonl').write_text('{"inputs": "cab"}\n{"input": "oops"}\n')
  with pytest.raises(
    UserError,
    match=r'bad.jsonl:2: expected an object with a string '
    r'"inputs"',
  ):
    infer_in_process(
      tmp_path / 'bad_out',
      CHECKPOINT_PATH=prompt_run,
      INPUT_FILE=str(tmp_path / 'bad.jsonl'),
      MIXTURE_OR_TASK_NAME=TASK,
    )
  assert not (tmp_path / 'bad_out').exists()


def test_input_files_with_a_byte_order_mark_crlf_and_unusual_line_separators(prompt_run, tmp_path):
  bom = '\ufeff'.encode()
  (tmp_path / 'sheet.txt').write_bytes(bom + 'cab\r\nhgf\r\n\r\nab\u2028c\r\n'.encode())
  txt = _read(
    infer_in_process(
      tmp_path / 'out', CHECKPOINT_PATH=prompt_run, INPUT_FILE=str(tmp_path / 'sheet.txt')
    )
  )
  # The mark is not part of the first input, CRLF ends lines, U+2028 does not.
  assert [l['inputs'] for l in txt] == ['cab', 'hgf', 'ab\u2028c']
  lines = ['{"inputs": "cab"}', '{"inputs": "hgf", "targets": "h"}']
  (tmp_path / 'sheet.jsonl').write_bytes(bom + '\r\n'.join(lines).encode())
  jsonl = _read(
    infer_in_process(
      tmp_path / 'out', CHECKPOINT_PATH=prompt_run, INPUT_FILE=str(tmp_path / 'sheet.jsonl')
    )
  )
  assert [(l['inputs'], l.get('targets')) for l in jsonl] == [('cab', None), ('hgf', 'h')]
  assert [l['prediction'] for l in jsonl] == [l['prediction'] for l in txt[:2]]


def test_inputs_are_checked_before_the_base_loads(prompt_run, tmp_path, monkeypatch):
  def loaded(*args, **kwargs):
    raise AssertionError('the base was loaded before the inputs were checked')

  monkeypatch.setattr(base_readers.BaseCheckpoint, 'load_model', loaded)
  monkeypatch.setattr(opening, 'load', loaded)
  out = tmp_path / 'out'

  def refused(fragments, **macros):
    with pytest.raises(UserError) as error:
      infer_in_process(out, **macros)
    for fragment in fragments:
      assert fragment in str(error.value), str(error.value)
    assert not out.exists()

  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'blank.jsonl').write_text('\n  \r\n\t\n')
  (tmp_path / 'bom.txt').write_bytes('\ufeff\r\n'.encode())
  for name in ('empty.txt', 'blank.jsonl', 'bom.txt'):
    path = str(tmp_path / name)
    refused([f'INPUT_FILE={path!r} holds no inputs'], CHECKPOINT_PATH=prompt_run, INPUT_FILE=path)
  blank = str(tmp_path / 'blank.jsonl')
  refused(['blank.jsonl', 'holds no inputs'], PROMPTS={'max': prompt_run}, INPUT_FILE=blank)
  refused(['INPUT_FILE=', 'blank.jsonl', 'no inputs'], ENSEMBLE=[prompt_run], INPUT_FILE=blank)
  (tmp_path / 'table.csv').write_text('inputs,targets\ncab,c\n')
  refused(
    ['table.csv', 'is a CSV file', '.txt (one input per line) or .jsonl'],
    CHECKPOINT_PATH=prompt_run,
    INPUT_FILE=str(tmp_path / 'table.csv'),
  )
  good = tmp_path / 'in.jsonl'
  good.write_text('{"inputs": "cab", "prompt": "max"}\n{"inputs": "x", "prompt": "mx"}\n')
  refused(['in.jsonl:2', "unknown prompt 'mx'"], PROMPTS={'max': prompt_run}, INPUT_FILE=str(good))
  refused(['PROMPTS serves', 'set INPUT_FILE'], PROMPTS={'max': prompt_run})
  # An empty PROMPTS or ENSEMBLE is named as such, not as a missing CHECKPOINT_PATH.
  refused(['PROMPTS is empty', 'name at least one run directory or .npy'], PROMPTS={})
  refused(['ENSEMBLE is empty'], ENSEMBLE=[], INPUT_FILE=str(good))


def test_checkpoint_path_is_required(tmp_path):
  with pytest.raises(UserError, match='CHECKPOINT_PATH is not set'):
    infer_in_process(tmp_path)


def test_rank_classification_picks_the_right_label(base_checkpoint):
  model = opening.load(base_checkpoint)
  ds = seqio.get_mixture_or_task('synthetic_max').get_dataset(
    {'inputs': 24, 'targets': 4}, split='validation', shuffle=False
  )
  examples = list(ds.take(64).as_numpy_iterator())
  inputs = [ex['inputs_pretokenized'].decode() for ex in examples]
  targets = [ex['targets_pretokenized'].decode() for ex in examples]
  options = list('abcdefgh')
  best, scores = inference.rank_classify(
    models.EncoderDecoderModel(model.config),
    model.params,
    seqio.ByteVocabulary(),
    inputs,
    options,
    input_length=24,
    target_length=4,
  )
  assert scores.shape == (64, 8)
  accuracy = np.mean([options[b] == t for b, t in zip(best, targets)])
  assert accuracy >= 0.95, accuracy
  assert (scores < 0).all()  # Log-likelihoods.


def test_a_task_is_fed_as_training_and_t5x_feed_it():
  """One EOS, the task's own, trimmed as the task trims: the encoder tokens the trainer
  and the evaluator see (infer used to append a second EOS)."""
  data.import_task_modules('tasks.synthetic')
  source = infer_io.task_source(TASK, 'validation', input_length=6)
  ds = data.get_dataset(
    TASK, {'inputs': 6, 'targets': 4}, 'validation', shuffle=False, repeat=False
  )
  expected = [[t for t in ex['encoder_input_tokens'] if t] for ex in ds.as_numpy_iterator()]
  assert [ex['tokens'] for ex in source.examples] == expected
  assert all(list(tokens).count(1) == 1 for tokens in expected)
  assert any(len(tokens) == 6 for tokens in expected)  # some were trimmed
