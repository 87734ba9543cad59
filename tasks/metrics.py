"""Metric functions for seqio tasks, in the seqio / t5.evaluation.metrics convention.

Each metric is `fn(targets, predictions) -> {name: value}`: `targets` and `predictions`
are equally long sequences of postprocessed examples, and every value is on a 0-100
scale. Empty inputs score 0.0 rather than raising; inputs of different lengths are an
error, since zipping them would silently drop examples.

    accuracy                 {'accuracy'}: stripped prediction == stripped target
    binary_f1('yes')         {'f1'}: F1 of the class whose label is 'yes' (MRPC, QQP)
    macro_f1(labels)         {'macro_f1'}: mean F1 over the labels (CommitmentBank)
    squad                    {'em', 'f1'}: SQuAD v1.1, max over the acceptable answers
    rouge                    {'rouge1', 'rouge2', 'rougeLsum'}: mean F-measure

`files.exact_match` is `accuracy` under the key 'exact_match'.
"""

import collections
import re
import string
from typing import Callable, Sequence, Union

from rouge_score import rouge_scorer

Answers = Union[str, Sequence[str]]
_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = frozenset(string.punctuation)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target after stripping whitespace."""
  _check_lengths(targets, predictions)
  if not targets:
    return {'accuracy': 0.0}
  hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
  return {'accuracy': 100.0 * hits / len(targets)}


def binary_f1(positive_label: str) -> Callable[[Sequence[str], Sequence[str]], dict[str, float]]:
  """Returns a metric giving {'f1'} for the class `positive_label` (stripped labels).

  Any other label, including an unparseable prediction, counts as negative. With no
  true positives the F1 is 0.0.
  """
  positive = positive_label.strip()

  def f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    pairs = [(t.strip() == positive, p.strip() == positive) for t, p in zip(targets, predictions)]
    true_pos = sum(t and p for t, p in pairs)
    false_pos = sum(p and not t for t, p in pairs)
    false_neg = sum(t and not p for t, p in pairs)
    if not true_pos:
      return {'f1': 0.0}
    return {'f1': 100.0 * 2 * true_pos / (2 * true_pos + false_pos + false_neg)}

  return f1


def macro_f1(labels: Sequence[str]) -> Callable[[Sequence[str], Sequence[str]], dict[str, float]]:
  """Returns a metric giving {'macro_f1'}: the unweighted mean of each label's F1."""
  per_label = [binary_f1(label) for label in labels]

  def f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    scores = [metric(targets, predictions)['f1'] for metric in per_label]
    return {'macro_f1': sum(scores) / len(scores)}

  return f1


def normalize_answer(text: str) -> str:
  """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, squash spaces."""
  text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return ' '.join(_ARTICLES.sub(' ', text).split())


def _token_f1(target: str, prediction: str) -> float:
  target_tokens = normalize_answer(target).split()
  prediction_tokens = normalize_answer(prediction).split()
  common = collections.Counter(target_tokens) & collections.Counter(prediction_tokens)
  same = sum(common.values())
  if not same:
    return 0.0
  precision, recall = same / len(prediction_tokens), same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Answers], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD v1.1 exact match and token F1, each the max over a target's answers.

  A target is one answer string or a list/tuple of acceptable answers.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {'em': 0.0, 'f1': 0.0}
  em = f1 = 0.0
  for answers, prediction in zip(targets, predictions):
    answers = [answers] if isinstance(answers, str) else list(answers)
    em += max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
    f1 += max(_token_f1(a, prediction) for a in answers)
  return {'em': 100.0 * em / len(targets), 'f1': 100.0 * f1 / len(targets)}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures (Porter-stemmed), averaged over examples.

  The score is the plain mean of per-example F-measures (deterministic; t5 reports the
  median of a bootstrap instead, which differs slightly). For ROUGE-Lsum a text's
  sentences are its lines, as t5 writes them, so put each sentence on its own line.
  Needs no NLTK data downloads.
  """
  _check_lengths(targets, predictions)
  keys = ('rouge1', 'rouge2', 'rougeLsum')
  if not targets:
    return {key: 0.0 for key in keys}
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
  totals = dict.fromkeys(keys, 0.0)
  for target, prediction in zip(targets, predictions):
    scores = scorer.score(target, prediction)
    for key in keys:
      totals[key] += scores[key].fmeasure
  return {key: 100.0 * total / len(targets) for key, total in totals.items()}
