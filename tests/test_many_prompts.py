"""One frozen model, many prompts: PROMPTS (mixed-prompt batches) and ENSEMBLE in infer.sh
and t5pt.eval, checked against each run decoded or evaluated on its own."""

import json
import os
import shutil
import zlib

import numpy as np
import pytest

import gin
from t5pt.checkpoints import opening
from t5pt.model import models
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.serving import batch_inference
from t5pt.serving import ensemble
from t5pt.serving import ensemble_evaluation
from t5pt.serving import evaluation
from t5pt.serving import infer_io
from t5pt.serving import inference
from t5pt.serving import prompt_bank
from tasks import synthetic
from tests.conftest import train_in_process

MAX_TASK, MIN_TASK = 'synthetic_heldout_max', 'synthetic_heldout_min'
PROMPT_GIN = 'gin/t5_1_1_tiny_prompt.gin'


def _train(model_dir, base, **macros) -> str:
  macros = {
    'TRAIN_STEPS': 10,
    'CHECKPOINT_PERIOD': 10,
    'EVAL_PERIOD': 1000,
    'BATCH_SIZE': 16,
    **macros,
  }
  train_in_process(PROMPT_GIN, str(model_dir), INITIAL_CHECKPOINT_PATH=base, **macros)
  return str(model_dir)


@pytest.fixture(scope='module')
def min_run(base_checkpoint, tmp_path_factory) -> str:
  """A prompt of another length (5, the max run's is 8) for the other held-out task."""
  return _train(
    tmp_path_factory.mktemp('min_run'),
    base_checkpoint,
    MIXTURE_OR_TASK_NAME=MIN_TASK,
    PROMPT_LENGTH=5,
  )


@pytest.fixture(scope='module')
def npy_prompt(prompt_run, tmp_path_factory) -> str:
  """The max run's prompt as a bare .npy array."""
  path = str(tmp_path_factory.mktemp('npy') / 'max.npy')
  np.save(path, opening.open_run(prompt_run).prompt)
  return path


def _run(module_fn, gin_file, bindings):
  gin.clear_config()
  gin_utils.parse([gin_file], bindings)
  try:
    return module_fn()
  finally:
    gin.clear_config()


def infer(output_dir, bindings=(), **macros) -> str:
  bindings = [f'INFER_OUTPUT_DIR = {str(output_dir)!r}', 'BATCH_SIZE = 8', *bindings]
  bindings += [f'{k} = {v!r}' for k, v in macros.items()]
  return _run(lambda: batch_inference.infer(progress_bar=False), 'gin/infer.gin', bindings)


def evaluate(output_dir, **macros):
  bindings = [f'EVAL_OUTPUT_DIR = {str(output_dir)!r}', 'BATCH_SIZE = 32']
  bindings += [f'{k} = {v!r}' for k, v in macros.items()]
  return _run(evaluation.evaluate, 'gin/eval.gin', bindings)


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _write(path, records) -> str:
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  return str(path)


def _inputs(task, count):
  return list(synthetic.examples(task, 'validation')[0][:count])


@pytest.fixture(scope='module')
def mixed(prompt_run, min_run, npy_prompt, tmp_path_factory):
  """One infer run over a file whose lines name three prompts (two runs of prompt lengths
  8 and 5 for two tasks, and the first run's prompt as .npy), interleaved."""
  root = tmp_path_factory.mktemp('mixed')
  maxes, mins = _inputs(MAX_TASK, 13), _inputs(MIN_TASK, 13)
  records = []
  for x, y in zip(maxes, mins):
    records += [{'inputs': x, 'prompt': 'max'}, {'inputs': y, 'prompt': 'min'}]
  records += [{'inputs': x, 'prompt': 'max_npy'} for x in maxes[:5]]
  prompts = {'max': prompt_run, 'min': min_run, 'max_npy': npy_prompt}
  path = infer(root / 'out', PROMPTS=prompts, INPUT_FILE=_write(root / 'in.jsonl', records))
  return records, _read(path)


def test_with_tools_every_line_still_decodes_with_its_own_prompt(
  mixed, prompt_run, min_run, npy_prompt, tmp_path
):
  """PROMPTS with TOOLS decodes through the tool runtime, each row with its own prompt: the
  tuned runs write no calls, so every line is what it is without tools."""
  records, lines = mixed
  path = infer(
    tmp_path / 'out',
    ["TOOLS = {'Calculator': @tools.calculator()}"],
    PROMPTS={'max': prompt_run, 'min': min_run, 'max_npy': npy_prompt},
    INPUT_FILE=_write(tmp_path / 'in.jsonl', records),
  )
  with_tools = _read(path)
  assert [(l['prompt'], l['prediction']) for l in with_tools] == [
    (l['prompt'], l['prediction']) for l in lines
  ]
  assert all(
    not l['calls'] and l['prediction_without_calls'] == l['prediction'] for l in with_tools
  )


def _alone(run, inputs, output_dir):
  path = infer(
    output_dir,
    CHECKPOINT_PATH=run,
    INPUT_FILE=_write(
      output_dir.parent / f'{output_dir.name}.jsonl', [{'inputs': x} for x in inputs]
    ),
  )
  return _read(path)


def test_every_line_decodes_as_its_prompt_alone(mixed, prompt_run, min_run, tmp_path):
  records, lines = mixed
  assert [l['inputs'] for l in lines] == [r['inputs'] for r in records]
  assert [l['prompt'] for l in lines] == [r['prompt'] for r in records]
  for name, run in (('max', prompt_run), ('min', min_run)):
    ours = [l for l in lines if l['prompt'] == name]
    alone = _alone(run, [l['inputs'] for l in ours], tmp_path / name)
    assert [l['prediction'] for l in ours] == [l['prediction'] for l in alone]
    np.testing.assert_allclose(
      [l['score'] for l in ours], [l['score'] for l in alone], rtol=1e-4, atol=1e-4
    )
  # A .npy prompt on the base BASE-less .npy takes from the runs: the same as its run.
  by_input = {l['inputs']: l['prediction'] for l in lines if l['prompt'] == 'max'}
  assert all(by_input[l['inputs']] == l['prediction'] for l in lines if l['prompt'] == 'max_npy')


def test_an_interrupted_mixed_run_resumes_to_the_same_file(
  mixed, prompt_run, min_run, npy_prompt, tmp_path, monkeypatch
):
  records, reference = mixed
  real_write = infer_io.ChunkedOutput.write_chunk
  calls = []

  def write_one_then_die(self, index, lines):
    if calls:
      raise KeyboardInterrupt
    calls.append(index)
    real_write(self, index, lines)

  prompts = {'max': prompt_run, 'min': min_run, 'max_npy': npy_prompt}
  source = _write(tmp_path / 'in.jsonl', records)
  chunked = {
    'PROMPTS': prompts,
    'INPUT_FILE': source,
    'bindings': ['batch_inference.infer.chunk_batches = 1'],
  }
  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', write_one_then_die)
  with pytest.raises(KeyboardInterrupt):
    infer(tmp_path / 'out', **chunked)
  monkeypatch.setattr(infer_io.ChunkedOutput, 'write_chunk', real_write)
  assert calls == [0]
  assert not os.path.exists(tmp_path / 'out' / 'in-jsonl.jsonl')
  assert _read(infer(tmp_path / 'out', **chunked)) == reference


def test_ensemble_votes_and_ranks_like_its_members(prompt_run, min_run, tmp_path):
  inputs = _inputs(MAX_TASK, 12)
  source = _write(tmp_path / 'in.jsonl', [{'inputs': x} for x in inputs])
  members = {'a': prompt_run, 'b': prompt_run, 'c': min_run}
  alone = {
    name: [l['prediction'] for l in _alone(run, inputs, tmp_path / f'alone_{name}')]
    for name, run in (('max', prompt_run), ('min', min_run))
  }
  voted = _read(infer(tmp_path / 'vote', ENSEMBLE=members, INPUT_FILE=source))
  assert [l['members']['a']['prediction'] for l in voted] == alone['max']
  assert [l['members']['c']['prediction'] for l in voted] == alone['min']
  # a and b are one prompt: they outvote c wherever c disagrees.
  assert [l['prediction'] for l in voted] == alone['max']
  assert all(
    l['votes'] == (3 if l['members']['c']['prediction'] == l['prediction'] else 2) for l in voted
  )

  options = list(synthetic.ALPHABET)
  ranked = _read(
    infer(
      tmp_path / 'score',
      ENSEMBLE=members,
      INPUT_FILE=source,
      ENSEMBLE_METHOD='score',
      ENSEMBLE_OPTIONS=options,
    )
  )
  # The option with the highest log-likelihood summed over the three members.
  per_member = []
  for run in members.values():
    loaded = opening.load(run)
    _, scores = inference.rank_classify(
      models.EncoderDecoderModel(loaded.config),
      loaded.params,
      synthetic.VOCABULARY,
      inputs,
      options,
      input_length=24 - loaded.config.prompt_length,
      target_length=10,
    )
    per_member.append(scores)
  total = sum(per_member)
  assert [l['prediction'] for l in ranked] == [options[i] for i in total.argmax(axis=1)]
  np.testing.assert_allclose([l['score'] for l in ranked], total.max(axis=1), rtol=1e-4, atol=1e-3)

  # Each member's log-likelihood of given targets (eval's score metrics) from one batch.
  bank = prompt_bank.PromptBank(members, 'ENSEMBLE')
  encode = lambda text: list(synthetic.VOCABULARY.encode(text)) + [inference.EOS_ID]
  targets = np.zeros((len(inputs), 10), np.int32)
  targets[:, :2] = encode(options[0])
  scored = ensemble.target_scores(bank, [encode(x) for x in inputs], targets, 16, 24)
  np.testing.assert_allclose(scored, np.stack([s[:, 0] for s in per_member], 1), atol=1e-4)


@pytest.mark.slow
def test_eval_reports_each_member_and_the_ensemble(prompt_run, min_run, tmp_path):
  members = {'a': prompt_run, 'b': prompt_run, 'c': min_run}
  results = evaluate(tmp_path / 'ens', ENSEMBLE=members, MIXTURE_OR_TASK_NAME=MAX_TASK)
  assert set(results) == {'a', 'b', 'c', 'ensemble'}
  alone_max = evaluate(tmp_path / 'max', CHECKPOINT_PATH=prompt_run)
  alone_min = evaluate(tmp_path / 'min', CHECKPOINT_PATH=min_run, MIXTURE_OR_TASK_NAME=MAX_TASK)
  accuracy = lambda r: r[MAX_TASK]['sequence_accuracy']
  assert accuracy(results['a']) == accuracy(results['b']) == accuracy(alone_max)
  assert accuracy(results['c']) == accuracy(alone_min)
  assert accuracy(results['ensemble']) == accuracy(alone_max)  # a and b outvote c
  for label in ('a', 'c', 'ensemble'):
    assert (tmp_path / 'ens' / label / f'{MAX_TASK}-metrics.jsonl').exists()


def _odd_decode(text: str, shift: int) -> list[int]:
  """A decode for input `text` of synthetic_heldout_max: by a hash of the text (plus
  `shift`), none (EOS first), the target alone, several tokens, or a row without EOS."""
  target = synthetic.VOCABULARY.encode(max(text))
  case = (zlib.crc32(text.encode()) + shift) % 4
  return [[], target, target * 2 + synthetic.VOCABULARY.encode('a'), target * 10][case]


def test_decoder_row_undoes_until_eos_whatever_the_decode_length():
  eos = inference.EOS_ID
  rows = [[eos] + [0] * 9, [5, eos] + [0] * 8, [5, 6, 7, eos] + [0] * 6, [5] * 10]
  for row in rows:
    np.testing.assert_array_equal(ensemble.decoder_row(inference.until_eos(row), 10), row)
  # One shape for seqio, as the single-run path's rows.
  assert np.array([ensemble.decoder_row(inference.until_eos(r), 10) for r in rows]).shape == (4, 10)


@pytest.mark.parametrize(
  'method, options', [('vote', None), ('score', None), ('score', 'abcdefgh')]
)
def test_eval_of_members_decoding_different_lengths(
  method, options, prompt_run, tmp_path, monkeypatch
):
  """Members whose decodes are empty, one token, several, or fill the targets length
  without EOS (the bench's 1-vector prompts do): t5pt.eval scores each and the ensemble."""
  real_predict = prompt_bank.PromptBank.predict

  def predict(self, tokens, ids, max_length, decode):
    decoded, scores = real_predict(self, tokens, ids, max_length, decode)
    decoded = np.array(decoded)
    for r in range(tokens.shape[0]):
      text = synthetic.VOCABULARY.decode(inference.until_eos(tokens[r]))
      if text:  # c is shifted: never the decode of a and b
        decoded[r, 0] = ensemble.decoder_row(
          _odd_decode(text, int(ids[r] == self.index('c'))), max_length
        )
    return decoded, scores

  handed = []  # what seqio's Evaluator is handed, as t5pt.eval hands it
  real_decode_task = ensemble_evaluation._decode_task
  monkeypatch.setattr(prompt_bank.PromptBank, 'predict', predict)
  monkeypatch.setattr(
    ensemble_evaluation,
    '_decode_task',
    lambda *args, **kwargs: handed.append(real_decode_task(*args, **kwargs)) or handed[-1],
  )
  results = evaluate(
    tmp_path,
    ENSEMBLE={'a': prompt_run, 'b': prompt_run, 'c': prompt_run},
    ENSEMBLE_METHOD=method,
    ENSEMBLE_OPTIONS=options and list(options),
    MIXTURE_OR_TASK_NAME=MAX_TASK,
  )
  inputs, targets = synthetic.examples(MAX_TASK, 'validation')
  assert {len(_odd_decode(x, 0)) for x in inputs} == {0, 1, 3, 10}
  (predictions,) = [h['predictions'] for h in handed]
  texts = {}
  for label, rows in predictions.items():
    assert [i for i, _ in rows] == list(range(len(inputs)))
    assert {len(row) for _, row in rows} == {10}  # one shape, as a single run's rows
    texts[label] = [synthetic.VOCABULARY.decode(row) for _, row in rows]
  accuracy = lambda labels: 100 * np.mean([p == t for p, t in zip(labels, targets)])
  for label, shift in (('a', 0), ('b', 0), ('c', 1)):
    assert texts[label] == [synthetic.VOCABULARY.decode(_odd_decode(x, shift)) for x in inputs]
  for label in ('a', 'b', 'c', 'ensemble'):
    assert results[label][MAX_TASK]['sequence_accuracy'] == pytest.approx(accuracy(texts[label]))
    assert (tmp_path / label / f'{MAX_TASK}-metrics.jsonl').exists()
  ours = texts['ensemble']
  if method == 'vote':  # a and b outvote c
    assert ours == texts['a']
  elif options:  # the likeliest option: one letter, whatever the members decoded
    assert set(ours) <= set(options)
  else:  # the likelier of the members' decodes, of whatever lengths
    assert all(p in (a, c) for p, a, c in zip(ours, texts['a'], texts['c']))
    assert len({len(p) for p in ours}) > 1  # the answers themselves differ in length


@pytest.fixture(scope='module')
def other_base_run(base_checkpoint, tmp_path_factory) -> str:
  """A prompt trained on a copy of the base at another path (so: another base)."""
  root = tmp_path_factory.mktemp('other_base')
  copy = root / 'base'
  shutil.copytree(base_checkpoint, copy)
  return _train(root / 'run', str(copy), TRAIN_STEPS=2, CHECKPOINT_PERIOD=2)


@pytest.fixture(scope='module')
def lora_run(base_checkpoint, tmp_path_factory) -> str:
  return _train(
    tmp_path_factory.mktemp('lora_run'),
    base_checkpoint,
    TRAIN_STEPS=2,
    CHECKPOINT_PERIOD=2,
    bindings=['network.T5Config.lora_rules = %adapters.DEFAULT_LORA_RULES'],
  )


def _bad(tmp_path, fragments, **macros):
  out = tmp_path / 'out'
  with pytest.raises(UserError) as error:
    infer(out, **macros)
  for fragment in fragments:
    assert fragment in str(error.value)
  assert not out.exists() or not any(out.iterdir())  # nothing written


def test_bad_prompt_settings_fail_clearly_before_writing(
  prompt_run, min_run, other_base_run, lora_run, tmp_path
):
  good = _write(tmp_path / 'in.jsonl', [{'inputs': 'abc', 'prompt': 'max'}])
  pair = {'max': prompt_run, 'min': min_run}
  unknown = _write(
    tmp_path / 'unknown.jsonl',
    [{'inputs': 'abc', 'prompt': 'max'}, {'inputs': 'x', 'prompt': 'mx'}],
  )
  _bad(
    tmp_path,
    ['unknown.jsonl:2', "unknown prompt 'mx'", "['max', 'min']"],
    PROMPTS=pair,
    INPUT_FILE=unknown,
  )
  unnamed = _write(tmp_path / 'unnamed.jsonl', [{'inputs': 'abc'}])
  _bad(tmp_path, ['unnamed.jsonl:1', 'names no prompt'], PROMPTS=pair, INPUT_FILE=unnamed)
  _bad(
    tmp_path,
    ['different bases', 'BASE_CHECKPOINT_PATH'],
    PROMPTS={'max': prompt_run, 'other': other_base_run},
    INPUT_FILE=good,
  )
  _bad(
    tmp_path,
    ["PROMPTS['lora']", 'besides the prompt', 'lora_a'],
    PROMPTS={'max': prompt_run, 'lora': lora_run},
    INPUT_FILE=good,
  )
  wide = str(tmp_path / 'wide.npy')
  np.save(wide, np.zeros((4, 64), np.float32))
  _bad(
    tmp_path,
    ["PROMPTS['wide']", 'width 64', '128'],
    PROMPTS={'max': prompt_run, 'wide': wide},
    INPUT_FILE=good,
  )
  _bad(
    tmp_path,
    ['CHECKPOINT_PATH and PROMPTS'],
    PROMPTS=pair,
    CHECKPOINT_PATH=prompt_run,
    INPUT_FILE=good,
  )
  _bad(tmp_path, ['PROMPTS serves', 'INPUT_FILE'], PROMPTS=pair)
  _bad(tmp_path, ['names a prompt', 'PROMPTS'], CHECKPOINT_PATH=prompt_run, INPUT_FILE=good)
  _bad(
    tmp_path,
    ['ENSEMBLE_OPTIONS', "'score'"],
    ENSEMBLE=[prompt_run, min_run],
    ENSEMBLE_OPTIONS=['a'],
    INPUT_FILE=good,
  )
  _bad(
    tmp_path,
    ["ENSEMBLE_OPTIONS: 'abcdefghijkl'", 'targets length 10'],
    ENSEMBLE=[prompt_run, min_run],
    ENSEMBLE_METHOD='score',
    ENSEMBLE_OPTIONS=['a', 'abcdefghijkl'],
    INPUT_FILE=_write(tmp_path / 'plain.jsonl', [{'inputs': 'abc'}]),
  )
  _bad(tmp_path, ['only .npy', 'BASE_CHECKPOINT_PATH'], PROMPTS={'wide': wide}, INPUT_FILE=good)
  _bad(tmp_path, ['record different MIXTURE_OR_TASK_NAME'], ENSEMBLE=[prompt_run, min_run])


def test_named_entries_from_a_list():
  assert prompt_bank.named_entries(['/r/a', 'gs://b/c.npy'], 'ENSEMBLE') == {
    'a': '/r/a',
    'c': 'gs://b/c.npy',
  }
  assert list(prompt_bank.named_entries(['/x/run', '/y/run'], 'ENSEMBLE')) == ['run#0', 'run#1']
  with pytest.raises(UserError, match='ENSEMBLE is empty'):
    prompt_bank.named_entries([], 'ENSEMBLE')


def test_a_tied_vote_goes_to_the_likelier_answer():
  members = [[5], [6], [6], [5]]
  assert ensemble._vote(members, np.array([-0.1, -2.0, -1.0, -0.2])) == ([5], 2)
  assert ensemble._vote(members, np.array([-3.0, -0.1, -0.1, -0.2])) == ([6], 2)
  assert ensemble._vote([[5], [6], [6]], np.array([-0.1, -5.0, -5.0])) == ([6], 2)
