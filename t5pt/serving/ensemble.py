"""Prompt ensembles: every input decoded with each of K prompts in one batch, combined.

Lester et al. (2021) ensembled five prompts trained for one task on one frozen model and
beat the average prompt. The K members are rows of one PromptBank batch ([inputs x K]
rows), so the base is loaded and run once. Two ways to combine:

  vote    the answer most members decode (a tie goes to the higher summed log-likelihood
          of the tied members' decodes): for classification-style outputs.
  score   rank classification: every candidate (each member's decode, or the task's
          `options` when given) is scored under every prompt, and the candidate with the
          highest total log-likelihood wins, a product of the members' distributions.
"""

import collections
import dataclasses
from typing import Optional, Sequence

import numpy as np

from t5pt.runtime import checks
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.serving import prompt_bank

METHODS = ('vote', 'score')


@dataclasses.dataclass
class Decoded:
  """One batch of inputs through an ensemble. `members` [inputs, K] token lists (each
  member's best decode, without EOS) and `member_scores` [inputs, K]; `tokens` the
  ensemble's answer per input and `score` its log-likelihood (vote: the mean over the
  members that chose it; score: the total over all members); `votes` [inputs]: how many
  members decoded the answer."""

  members: list[list[list[int]]]
  member_scores: np.ndarray
  tokens: list[list[int]]
  score: np.ndarray
  votes: np.ndarray


def check_method(method: str, options, macro: str = 'ENSEMBLE_METHOD') -> None:
  checks.choice(method, macro, METHODS)
  if options is not None:
    if method != 'score':
      raise UserError(
        f"ENSEMBLE_OPTIONS is set but {macro}={method!r}: options are ranked by score; set "
        f"{macro} = 'score'."
      )
    if not isinstance(options, (list, tuple)) or not options:
      raise UserError(f'ENSEMBLE_OPTIONS={options!r}: expected a non-empty list of strings.')
    for option in options:
      checks.string(option, 'ENSEMBLE_OPTIONS entries')


def option_ids(
  options: Optional[Sequence[str]], vocabulary, max_length: int
) -> Optional[list[list[int]]]:
  """ENSEMBLE_OPTIONS as target ids ending in EOS (None stays None); each must fit."""
  if options is None:
    return None
  ids = [list(vocabulary.encode(o)) + [inference.EOS_ID] for o in options]
  for option, tokens in zip(options, ids):
    if len(tokens) > max_length:
      raise UserError(
        f'ENSEMBLE_OPTIONS: {option!r} is {len(tokens)} tokens with EOS, longer than the '
        f"targets length {max_length}; raise TASK_FEATURE_LENGTHS['targets'] or shorten it."
      )
  return ids


def decode(
  bank: prompt_bank.PromptBank,
  inputs: Sequence[Sequence[int]],
  batch_size: int,
  input_length: int,
  max_length: int,
  decode_config: inference.DecodeConfig,
  method: str = 'vote',
  options: Optional[Sequence[Sequence[int]]] = None,
) -> Decoded:
  """Decodes up to `batch_size` inputs (token ids ending in EOS) with every member of
  `bank`; `options`: candidate targets (token ids ending in EOS) for method 'score'."""
  k = len(bank.names)
  tokens, ids = _member_rows(bank, inputs, batch_size, input_length)
  decoded, scores = bank.predict(tokens, ids, max_length, decode_config)
  members = [
    [inference.until_eos(decoded[i * k + j, 0]) for j in range(k)] for i in range(len(inputs))
  ]
  member_scores = np.asarray(scores[: len(inputs) * k, 0]).reshape(len(inputs), k)
  if method == 'vote':
    answers = [_vote(m, s) for m, s in zip(members, member_scores)]
    winners = [a for a, _ in answers]
    votes = np.array([v for _, v in answers])
    score = np.array(
      [s[[m == w for m in ms]].mean() for ms, s, w in zip(members, member_scores, winners)]
    )
    return Decoded(members, member_scores, winners, score, votes)
  winners, score = _rank(bank, tokens, ids, members, options, max_length, k)
  votes = np.array([sum(m == w for m in ms) for ms, w in zip(members, winners)])
  return Decoded(members, member_scores, winners, score, votes)


def target_scores(
  bank: prompt_bank.PromptBank,
  inputs: Sequence[Sequence[int]],
  targets: np.ndarray,
  batch_size: int,
  input_length: int,
) -> np.ndarray:
  """Log-likelihood [inputs, K] of each input's targets [inputs, target_length] under every
  member: the members' score metrics."""
  k = len(bank.names)
  tokens, ids = _member_rows(bank, inputs, batch_size, input_length)
  rows = np.zeros((tokens.shape[0], targets.shape[1]), np.int32)
  rows[: len(inputs) * k] = np.repeat(targets[: len(inputs)], k, axis=0)
  return bank.score(tokens, rows, ids)[: len(inputs) * k].reshape(len(inputs), k)


def decoder_row(tokens: Sequence[int], max_length: int) -> np.ndarray:
  """The decoder's row [max_length] for a decode (inference.until_eos's inverse): `tokens`,
  then EOS and zeros, cut at max_length (a decode that filled it has no EOS). What the
  single-run path hands seqio and scores, whatever the decode's length."""
  ids = (list(tokens) + [inference.EOS_ID])[:max_length]
  row = np.zeros((max_length,), np.int32)
  row[: len(ids)] = ids
  return row


def _member_rows(bank, inputs, batch_size: int, input_length: int):
  """The batch of K rows per input (input i with member j at row i * K + j), padded to
  batch_size * K rows: (tokens, prompt ids) as PromptBank.rows makes them."""
  k = len(bank.names)
  return bank.rows(
    [x for x in inputs for _ in range(k)], bank.names * len(inputs), input_length, batch_size * k
  )


def _vote(members: list[list[int]], scores: np.ndarray) -> tuple[list[int], int]:
  """(the most frequent decode, its count); ties: the higher total score of its voters."""
  counts = collections.Counter(tuple(m) for m in members)
  total = collections.defaultdict(float)
  for m, s in zip(members, scores):
    total[tuple(m)] += float(s)
  best = max(counts, key=lambda answer: (counts[answer], total[answer]))
  return list(best), counts[best]


def _rank(bank, tokens, ids, members, options, max_length: int, k: int):
  """For each input, the candidate with the highest log-likelihood summed over members."""
  n = len(members)
  if options is None:
    candidates = [list(dict.fromkeys(tuple(m) for m in ms)) for ms in members]
  else:
    candidates = [[tuple(inference.until_eos(o)) for o in options]] * n
  width = max(len(c) for c in candidates)
  totals = np.full((n, width), -np.inf)
  for c in range(width):
    targets = np.zeros((tokens.shape[0], max_length), np.int32)
    for i in range(n):
      targets[i * k : (i + 1) * k] = decoder_row(
        candidates[i][min(c, len(candidates[i]) - 1)], max_length
      )
    scores = bank.score(tokens, targets, ids)[: n * k].reshape(n, k).sum(axis=1)
    for i in range(n):
      if c < len(candidates[i]):
        totals[i, c] = scores[i]
  best = totals.argmax(axis=1)
  return [list(candidates[i][best[i]]) for i in range(n)], totals[np.arange(n), best]
