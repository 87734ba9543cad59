r"""Prints a task's or mixture's examples as the model sees them, and a mixture's rates.

  python -m tasks.show synthetic_heldout_max --module=tasks.synthetic
  python -m tasks.show my_task --module=my_tasks --num=3 --inputs=512 --targets=128 \
      --prompt_length=100

For each example: the text of inputs and targets, their token counts (EOS included) and
whether TASK_FEATURE_LENGTHS truncates them once the prompt has taken its positions.
"""

from typing import Iterator, Optional, Sequence

from t5pt.runtime import logs

if __name__ == '__main__':
  logs.quiet_cli()  # Before seqio imports TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
import seqio
from absl import flags

from t5pt.runtime import data
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError
from t5pt.training import data_report
from t5pt.training.data_report import FEATURES

# pylint: enable=g-import-not-at-top,wrong-import-position

_MODULES = flags.DEFINE_multi_string('module', [], 'Module(s) that register the task.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'Split to show.')
_NUM = flags.DEFINE_integer('num', 5, 'How many examples.')
_INPUTS = flags.DEFINE_integer('inputs', 512, "TASK_FEATURE_LENGTHS['inputs'].")
_TARGETS = flags.DEFINE_integer('targets', 128, "TASK_FEATURE_LENGTHS['targets'].")
_PROMPT = flags.DEFINE_integer('prompt_length', 100, 'PROMPT_LENGTH (counted in inputs).')


def mixture_lines(provider: seqio.DatasetProviderBase) -> list[str]:
  """'task  rate  share%' for every task of a mixture (none for a task)."""
  if not isinstance(provider, seqio.Mixture):
    return []
  rates = {task.name: provider.get_rate(task) for task in provider.tasks}
  total = sum(rates.values())
  width = max(len(n) for n in rates)
  return [f'mixture {provider.name}: {len(rates)} tasks'] + [
    f'  {n:<{width}}  rate {r:>10.1f}  share {100 * r / total:5.1f}%'
    for n, r in sorted(rates.items(), key=lambda kv: -kv[1])
  ]


def example_lines(
  provider: seqio.DatasetProviderBase, split: str, num: int, lengths: dict, prompt_length: int
) -> Iterator[str]:
  budget = data.converter_lengths(lengths, prompt_length)
  ds = data_report.pretokenized(provider, split, budget)
  for i, ex in enumerate(ds.take(num).as_numpy_iterator()):
    yield f'--- example {i}'
    for feature in FEATURES:
      count = data_report.token_count(provider, feature, ex)
      note = f', truncated to {budget[feature]}' if count > budget[feature] else ''
      yield f'{feature} ({count} tokens{note}): {ex[f"{feature}_pretokenized"].decode()!r}'
  yield (
    f'encoder budget: {lengths["inputs"]} positions = {prompt_length} prompt + '
    f'{budget["inputs"]} input tokens; decoder: {budget["targets"]} target tokens'
  )


def show(
  name: str,
  modules: Sequence[str],
  split: str,
  num: int,
  lengths: dict,
  prompt_length: int,
  write=print,
) -> None:
  data.import_task_modules(list(modules))
  provider = data.get_provider(name)
  for line in mixture_lines(provider):
    write(line)
  for line in example_lines(provider, split, num, lengths, prompt_length):
    write(line)


def main(argv: Optional[Sequence[str]]) -> None:
  def show_from_flags():
    if len(argv) != 2:
      raise UserError(
        f'give one task or mixture name (got {list(argv[1:])}); usage: python -m tasks.show '
        'NAME [--module=my_tasks] [--split=validation] [--num=5]'
      )
    show(
      argv[1],
      _MODULES.value,
      _SPLIT.value,
      _NUM.value,
      {'inputs': _INPUTS.value, 'targets': _TARGETS.value},
      _PROMPT.value,
    )

  gin_utils.run(show_from_flags, parse_gin_flags=False)


if __name__ == '__main__':
  gin_utils.app_run(main)
