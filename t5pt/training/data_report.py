"""What a task's data looks like once fitted to TASK_FEATURE_LENGTHS: truncation, packing.

seqio trims inputs and targets to their budget without a word (its warning, "may be
insufficient", says nothing of how many examples lose how much). A training run prints,
before its first step, from a sample of the training split:

  data: inputs longer than 250 tokens (256 less the 6-position prompt): 838 of 1000
    sampled examples (83.8%), truncated by 37 tokens median, 412 max
  data: targets fit 64 tokens in all 1000 sampled examples (longest 58)
  data: packing holds 3.2 examples per row (sample of 64 rows)

Token counts include EOS and come from the untrimmed text seqio keeps as
`<feature>_pretokenized`, re-encoded with the feature's vocabulary (as tasks.show does).
"""

import dataclasses
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5pt.runtime import data

FEATURES = ('inputs', 'targets')
SAMPLE_EXAMPLES = 1000
SAMPLE_ROWS = 64


def pretokenized(
  provider: seqio.DatasetProviderBase, split: str, budget: Mapping[str, int]
) -> tf.data.Dataset:
  """The split in order with its `<feature>_pretokenized` texts, made as training makes it
  (with the budget: few-shot tasks prune exemplars to it)."""
  extra = (
    {'passthrough_features': [f'{f}_pretokenized' for f in FEATURES]}
    if isinstance(provider, seqio.Mixture)
    else {}
  )
  return provider.get_dataset(budget, split=split, shuffle=False, seed=0, num_epochs=1, **extra)


def token_count(provider: seqio.DatasetProviderBase, feature: str, example: Mapping) -> int:
  """Tokens of the example's untrimmed `feature`, EOS included."""
  text = example[f'{feature}_pretokenized']
  text = text.decode() if isinstance(text, bytes) else str(text)
  return len(provider.output_features[feature].vocabulary.encode(text)) + 1


@dataclasses.dataclass(frozen=True)
class Truncation:
  """How one feature's sampled examples fit its token budget."""

  feature: str
  budget: int
  lengths: tuple[int, ...]  # untrimmed, EOS included, one per sampled example

  @property
  def overflows(self) -> list[int]:
    return [n - self.budget for n in self.lengths if n > self.budget]

  def line(self, budget_note: str = '') -> str:
    sampled, over = len(self.lengths), self.overflows
    if not over:
      return (
        f'data: {self.feature} fit {self.budget} tokens{budget_note} in all {sampled} '
        f'sampled examples (longest {max(self.lengths)})'
      )
    return (
      f'data: {self.feature} longer than {self.budget} tokens{budget_note}: {len(over)} of '
      f'{sampled} sampled examples ({100 * len(over) / sampled:.1f}%), truncated by '
      f'{int(np.median(over))} tokens median, {max(over)} max'
    )


def truncation(
  name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  prompt_length: int = 0,
  sample: Optional[int] = None,
) -> dict[str, Truncation]:
  """{feature: Truncation} over the first `sample` (default SAMPLE_EXAMPLES) examples."""
  sample = sample or SAMPLE_EXAMPLES
  provider = data.get_provider(name)
  budget = data.converter_lengths(task_feature_lengths, prompt_length)
  lengths = {f: [] for f in FEATURES}
  for example in pretokenized(provider, split, budget).take(sample).as_numpy_iterator():
    for feature in FEATURES:
      lengths[feature].append(token_count(provider, feature, example))
  return {f: Truncation(f, budget[f], tuple(n)) for f, n in lengths.items() if n}


def examples_per_row(packed: tf.data.Dataset, rows: int = SAMPLE_ROWS) -> float:
  """Mean examples packed into one row of an unbatched packed EncDec dataset."""
  counts = [int(row['decoder_segment_ids'].max()) for row in packed.take(rows).as_numpy_iterator()]
  return float(np.mean(counts)) if counts else 0.0


def lines(
  name: str,
  split: str,
  task_feature_lengths: Mapping[str, int],
  prompt_length: int,
  packed: Optional[tf.data.Dataset] = None,
) -> Iterator[str]:
  """The report printed at the start of a run (`packed`: the training dataset when
  PACK=True)."""
  for feature, fit in truncation(name, split, task_feature_lengths, prompt_length).items():
    note = ''
    if feature == 'inputs' and prompt_length:
      note = f' ({task_feature_lengths["inputs"]} less the {prompt_length}-position prompt)'
    yield fit.line(note)
  if packed is not None:
    per_row = examples_per_row(packed)
    hint = ''
    if per_row < 1.5:
      hint = (
        '; packing gains little unless a row holds several examples: see docs/training.md '
        '"Choosing lengths and packing"'
      )
    yield f'data: packing holds {per_row:.1f} examples per row (sample of {SAMPLE_ROWS} rows){hint}'
