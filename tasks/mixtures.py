"""Mixtures the Flan way: examples-proportional rates with a per-task cap, and weighted
submixtures.

    from tasks import mixtures
    mixtures.register_capped_mixture('my_mix', ['task_a', 'task_b', 'task_c'])
    mixtures.register_weighted_mixture('my_flan', {'my_mix': 0.7, 'other_mix': 0.3})

Examples-proportional mixing samples each task in proportion to its number of training
examples, capped so that large datasets do not drown small ones (Raffel et al. 2020,
section 3.5.2). FLAN (Wei et al. 2021) capped each dataset at 3,000 for this rate, which
is the default here.
"""

from typing import Callable, Mapping, Optional, Sequence, Union

import seqio

from t5pt.runtime.errors import UserError

FLAN_EXAMPLE_CAP = 3000


def num_examples(task_name: str, split: str = 'train') -> int:
  """The task's example count for `split`, as its data source declares it."""
  task = seqio.get_mixture_or_task(task_name)
  count = task.num_input_examples(split) if split in task.splits else None
  if not count:
    raise UserError(
      f'Task {task_name!r} does not declare how many {split!r} examples it '
      'has, so it cannot be mixed by example count; give its data source '
      'num_input_examples, or use register_weighted_mixture.'
    )
  return int(count)


def capped_rates(
  task_names: Sequence[str], cap: Optional[int] = FLAN_EXAMPLE_CAP, split: str = 'train'
) -> dict[str, float]:
  """{task: min(number of `split` examples, cap)}: examples-proportional mixing rates."""
  if not task_names:
    raise UserError('A mixture needs at least one task.')
  return {
    name: float(num_examples(name, split) if cap is None else min(num_examples(name, split), cap))
    for name in task_names
  }


def capped_rate(
  cap: Optional[int] = FLAN_EXAMPLE_CAP, share: float = 1.0, split: str = 'train'
) -> Callable[[seqio.Task], float]:
  """A rate seqio evaluates when the mixture is first read: `share` * min(examples, cap).

  For tasks whose size is known only once their data is prepared (TFDS datasets), so
  registering the mixture reads nothing."""

  def rate(task: seqio.Task) -> float:
    count = num_examples(task.name, split)
    return share * (count if cap is None else min(count, cap))

  return rate


def _replace(name: str) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)


def register_capped_mixture(
  name: str, task_names: Sequence[str], cap: Optional[int] = FLAN_EXAMPLE_CAP
) -> seqio.Mixture:
  """Registers (or re-registers) an examples-proportional mixture capped at `cap`
  examples per task (None: no cap)."""
  rates = capped_rates(task_names, cap)
  _replace(name)
  return seqio.MixtureRegistry.add(name, list(rates.items()))


def register_weighted_mixture(
  name: str, weights: Mapping[str, Union[float, Callable[[seqio.Task], float]]]
) -> seqio.Mixture:
  """A mixture of tasks or submixtures with explicit weights (normalised by seqio);
  a weight may be a function of the task, such as `capped_rate()`."""
  numbers = [w for w in weights.values() if not callable(w)]
  if (
    not weights
    or any(w < 0 for w in numbers)
    or (len(numbers) == len(weights) and not sum(numbers))
  ):
    raise UserError(
      f'Mixture {name!r}: weights {dict(weights)} must be non-negative and not all zero.'
    )
  _replace(name)
  return seqio.MixtureRegistry.add(name, list(weights.items()))
