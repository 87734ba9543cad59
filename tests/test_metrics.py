"""Metric functions in tasks/metrics.py against values computed by hand."""

import nltk
import pytest

from t5pt.model import models
from t5pt.runtime import metrics_log
from tasks import metrics


def test_accuracy_strips_whitespace_but_not_case():
  got = metrics.accuracy(['a', 'b', 'c', 'd'], [' a', 'b\n', 'x', 'D'])
  assert got == {'accuracy': 50.0}


def test_binary_f1_from_a_confusion_matrix():
  f1 = metrics.binary_f1('yes')
  # TP = 2 (rows 0, 2), FN = 1 (row 1), FP = 1 (row 3), TN = 1: F1 = 4 / (4 + 1 + 1).
  got = f1(['yes', 'yes', 'yes', 'no', 'no'], ['yes', 'no', ' yes', 'yes', 'no'])
  assert got['f1'] == pytest.approx(100 * 4 / 6)


def test_binary_f1_without_true_positives_is_zero():
  f1 = metrics.binary_f1('yes')
  assert f1(['no', 'no'], ['no', 'no']) == {'f1': 0.0}
  assert f1(['yes', 'no'], ['no', 'yes']) == {'f1': 0.0}


def test_normalize_answer_drops_articles_punctuation_and_case():
  assert metrics.normalize_answer('An apple,  the BANANA. A-team') == 'apple banana ateam'


def test_squad_token_f1_by_hand():
  # 'cat sat' vs 'cat sat on mat': 2 shared tokens, precision 2/4, recall 2/2.
  got = metrics.squad([['the cat sat']], ['a cat sat on mat'])
  assert got['em'] == 0.0
  assert got['f1'] == pytest.approx(100 * 2 / 3)


def test_squad_takes_the_best_answer_and_accepts_a_plain_string():
  got = metrics.squad(
    [['London', 'Paris France'], 'The Eiffel Tower!'], ['Paris', 'eiffel   tower']
  )
  # Example 1: EM 0, F1 max(0, 2 * 1 * 0.5 / 1.5). Example 2: equal after normalising.
  assert got['em'] == pytest.approx(50.0)
  assert got['f1'] == pytest.approx(100 * (2 / 3 + 1) / 2)
  assert metrics.squad([('x', 'the city of Paris')], ['City of Paris.']) == {
    'em': 100.0,
    'f1': 100.0,
  }


def test_rouge_ngrams_by_hand():
  got = metrics.rouge(['the cat sat on the mat'], ['the cat sat'])
  # Unigrams: 3 of 3 predicted match, 3 of 6 target: F = 2/3. Bigrams: 2 of 2, 2 of 5.
  assert got['rouge1'] == pytest.approx(100 * 2 / 3)
  assert got['rouge2'] == pytest.approx(100 * 2 * 0.4 / 1.4)


def test_rouge_stems_and_averages_over_examples():
  got = metrics.rouge(['cats running', 'red apple'], ['cat runs', 'blue sky'])
  assert got['rouge1'] == pytest.approx(50.0)  # Mean of 100 and 0.


def test_rouge_lsum_splits_sentences_on_newlines():
  target = 'cats purr loudly\ndogs bark often'
  prediction = 'dogs bark often\ncats purr loudly'
  # Per line each target sentence is fully matched; as one sentence the LCS is 3 of 6.
  assert metrics.rouge([target], [prediction])['rougeLsum'] == pytest.approx(100.0)
  one_line = metrics.rouge([target.replace('\n', ' ')], [prediction.replace('\n', ' ')])
  assert one_line['rougeLsum'] == pytest.approx(50.0)


def test_rouge_needs_no_nltk_data(monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError('NLTK data was requested')

  monkeypatch.setattr(nltk.data, 'find', no_data)
  monkeypatch.setattr(nltk.data, 'load', no_data)
  assert metrics.rouge(['One sentence. Two.\nThree'], ['One. Three'])['rouge1'] > 0


def test_empty_inputs_score_zero():
  assert metrics.accuracy([], []) == {'accuracy': 0.0}
  assert metrics.binary_f1('yes')([], []) == {'f1': 0.0}
  assert metrics.squad([], []) == {'em': 0.0, 'f1': 0.0}
  assert metrics.rouge([], []) == {'rouge1': 0.0, 'rouge2': 0.0, 'rougeLsum': 0.0}


def test_length_mismatch_is_an_error():
  for fn in (metrics.accuracy, metrics.binary_f1('yes'), metrics.squad, metrics.rouge):
    with pytest.raises(ValueError, match='2 targets but 1 predictions'):
      fn(['a', 'b'], ['a'])


def test_macro_f1_averages_each_labels_f1():
  targets = ['yes', 'no', 'maybe', 'yes']
  predictions = ['yes', 'yes', 'maybe', 'no']
  # yes: tp1 fp1 fn1 -> 1/2; no: tp0 -> 0; maybe: tp1 -> 1.  Mean 0.5.
  assert metrics.macro_f1(['yes', 'no', 'maybe'])(targets, predictions) == pytest.approx(
    {'macro_f1': 50.0}
  )


def test_every_accuracy_is_a_percentage_and_says_so():
  # Teacher-forced accuracies share the 0-100 scale of t5's decoded metrics.
  sums = dict(
    loss_sum=3.0, z_loss_sum=0.0, weight_sum=4.0, correct_tokens=3.0,
    correct_sequences=1.0, num_sequences=4.0,
  )  # fmt: skip
  summary = models.summarize(sums)
  assert summary['token_accuracy'] == 75.0 and summary['sequence_accuracy'] == 25.0
  assert summary['loss'] == 0.75
  line = metrics_log.describe({**summary, 'task/exact_match': 7.42, 'learning_rate': 0.3})
  assert 'token_accuracy=75.00%' in line and 'sequence_accuracy=25.00%' in line
  assert 'task/exact_match=7.42%' in line
  assert 'loss=0.75,' in line and 'learning_rate=0.3' in line and 'loss=0.75%' not in line
  for name in ('accuracy', 'em', 'f1', 'macro_f1', 'rouge1', 'rougeLsum', 'bleu'):
    assert metrics_log.is_percentage(name), name
  for name in ('loss', 'z_loss', 'tokens_per_second', 'learning_rate', 'system'):
    assert not metrics_log.is_percentage(name), name


def test_tensorboard_tags_of_percentages_carry_the_unit(tmp_path):
  from tensorboard.backend.event_processing import plugin_event_accumulator
  from tensorboard.util import tensor_util

  events = metrics_log.EventFile(str(tmp_path))
  events.write(3, {'token_accuracy': 74.2, 'loss': 0.5})
  accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  (event,) = accumulator.Tensors('token_accuracy')
  assert tensor_util.make_ndarray(event.tensor_proto) == pytest.approx(74.2)
  percent = accumulator.SummaryMetadata('token_accuracy')
  assert percent.display_name == 'token_accuracy (%)'
  assert 'percent' in percent.summary_description
  assert accumulator.SummaryMetadata('loss').display_name == 'loss'
