"""Every TFDS-backed task of tasks.flan yields batches through t5pt's feature converter,
offline on `tfds.testing.mock_data`, and its metrics score its own targets perfectly."""

import contextlib

import pytest
import seqio
import tensorflow_datasets as tfds

from t5pt.runtime import data
from tasks import flan, mixtures, templates

BYTES = seqio.ByteVocabulary()
LENGTHS = {'inputs': 1024, 'targets': 256}
PROMPT_LENGTH = 8
BATCH = 2
# A target scored against itself. None: not necessarily 100 on mock text (a label missing
# from 6 examples has F1 0; a one-word summary has no bigrams).
PERFECT = {
  'accuracy': 100.0,
  'f1': 100.0,
  'macro_f1': None,
  'em': 100.0,
  'rouge1': 100.0,
  'rouge2': None,
  'rougeLsum': 100.0,
}


@contextlib.contextmanager
def mock_tfds(num_examples=6):
  """TFDS's offline mock, plus the split sizes it lacks (seqio asks for them)."""
  with (
    tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE),
    pytest.MonkeyPatch.context() as patch,
  ):
    patch.setattr(seqio.TfdsDataSource, 'num_input_examples', lambda self, split: num_examples)
    yield


@pytest.fixture(scope='module')
def registered():
  with mock_tfds():
    yield flan.register_all(BYTES, num_shots=2)
  flan.register_all()  # Back to the module's default vocabulary for other tests.


def test_the_declared_datasets_cover_the_issue_list(registered):
  assert set(registered) == {
    'sst2',
    'mrpc',
    'rte',
    'boolq',
    'cb',
    'copa',
    'squad',
    'xsum',
    'cnn_dailymail',
    'esnli',
  }
  assert 'esnli_zscot' in registered['esnli'] and 'squad_inverted' in registered['squad']
  assert 'squad_zsopt' not in registered['squad']  # Free-form answers have no options.
  mix = seqio.get_mixture_or_task(flan.MIXTURE)
  assert {t.name for t in mix.tasks} == {
    n for names in registered.values() for n in names if n.rsplit('_', 1)[1] in flan.MIXED_VARIANTS
  }


@pytest.mark.parametrize('spec', flan.SPECS, ids=lambda s: s.name)
def test_every_variant_yields_batches_and_scores_its_own_targets(registered, spec):
  task_names = registered[spec.name]
  with mock_tfds():
    for name in task_names:
      ds = data.get_dataset(
        name, LENGTHS, 'validation', prompt_length=PROMPT_LENGTH, shuffle=False, repeat=False
      )
      batch = next(data.iterate_batches(ds, BATCH, drop_remainder=False))
      assert batch['encoder_input_tokens'].shape == (BATCH, LENGTHS['inputs'] - PROMPT_LENGTH)
      assert batch['decoder_target_tokens'].shape == (BATCH, LENGTHS['targets'])
      assert (batch['encoder_input_tokens'][:, 0] > 0).all()

      task = seqio.get_mixture_or_task(name)
      raw = list(task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator())
      assert raw, name
      targets = [
        task.postprocess_fn(ex['targets_pretokenized'].decode(), example=ex, is_target=True)
        if task.postprocess_fn
        else ex['targets_pretokenized'].decode()
        for ex in raw
      ]
      predictions = [ex['targets_pretokenized'].decode() for ex in raw]
      if task.postprocess_fn:
        predictions = [task.postprocess_fn(p) for p in predictions]
      for metric in task.metric_fns:
        for key, value in metric(targets, predictions).items():
          expected = PERFECT[key]
          assert 0 <= value <= 100 if expected is None else value == pytest.approx(expected), (
            name,
            key,
            value,
          )


def test_squad_targets_are_every_acceptable_answer(registered):
  del registered
  with mock_tfds(num_examples=3):
    task = seqio.get_mixture_or_task('squad_zsnoopt')
    ex = next(task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator())
    raw = next(tfds.load('squad/v1.1:3.0.0', split='validation').as_numpy_iterator())
  answers = [a.decode() for a in raw['answers']['text']]
  assert len(answers) > 1
  assert task.postprocess_fn('x', example=ex, is_target=True) == answers
  assert ex['targets_pretokenized'].decode() == answers[0]


def test_copa_options_are_the_two_choices(registered):
  del registered
  with mock_tfds(num_examples=3):
    raw = next(tfds.load('super_glue/copa:1.0.2', split='validation').as_numpy_iterator())
    task = seqio.get_mixture_or_task('copa_zsopt')
    ex = next(task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator())
  choices = [raw['choice1'].decode(), raw['choice2'].decode()]
  assert ex['inputs_pretokenized'].decode().endswith(templates.options_text(choices))
  assert ex['targets_pretokenized'].decode() == choices[raw['label']]


def test_flan_mixture_rates_are_capped_and_shared_among_variants(registered):
  counts = {'sst2': 67_349, 'rte': 2_490}
  mix = seqio.get_mixture_or_task(flan.MIXTURE)
  rates = {}
  for task in mix.tasks:
    dataset = task.name.rsplit('_', 1)[0]
    if dataset in counts:
      # The rate function reads the size from the task; give it the real TFDS sizes.
      task.num_input_examples = lambda split, n=counts[dataset]: n
      rates[task.name] = mix.get_rate(task)
  assert rates == pytest.approx(
    {
      n: (mixtures.FLAN_EXAMPLE_CAP if n.startswith('sst2') else 2_490) / 4
      for n in registered['sst2'] + registered['rte']
      if n.rsplit('_', 1)[1] in flan.MIXED_VARIANTS
    }
  )
