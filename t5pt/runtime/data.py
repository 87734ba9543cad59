"""SeqIO task/mixture -> feature converter -> per-host numpy batches.

The soft prompt occupies the first PROMPT_LENGTH encoder positions, so it is counted in
the encoder budget: tokens get `inputs - PROMPT_LENGTH` positions and the network sees
exactly TASK_FEATURE_LENGTHS['inputs'] positions.
"""

import difflib
import importlib
import os
import traceback
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from t5pt.runtime import logs
from t5pt.runtime.errors import UserError

Batch = dict[str, np.ndarray]


def import_task_modules(modules: Union[None, str, Sequence[str]]) -> None:
  """Imports MIXTURE_OR_TASK_MODULE(s), whose import registers tasks and mixtures. An error
  the user's module raises is a UserError showing its frames in the user's files only."""
  if not modules:
    return
  for name in [modules] if isinstance(modules, str) else modules:
    try:
      importlib.import_module(name)
    except UserError:
      raise  # t5pt's own message, e.g. from tasks.files for a bad argument.
    except SyntaxError as e:
      raise UserError(
        f'{e.filename}:{e.lineno}: MIXTURE_OR_TASK_MODULE={name!r} has a syntax error: {e.msg}'
      ) from e
    except Exception as e:  # pylint: disable=broad-except  # The user's code raised it.
      missing = isinstance(e, ImportError) and (
        e.name and (name == e.name or name.startswith(e.name + '.'))
      )
      if missing:
        file = name.replace('.', os.sep) + '.py'
        raise UserError(
          f'MIXTURE_OR_TASK_MODULE={name!r} cannot be imported ({e}). Modules are imported '
          f'from the working directory ({os.getcwd()}) and PYTHONPATH: run from the folder '
          f'that holds {file}, or add that folder to PYTHONPATH '
          '(PYTHONPATH=/path/to/folder ./launch.sh ...).'
        ) from e
      raise UserError(
        f'MIXTURE_OR_TASK_MODULE={name!r} failed to import: {type(e).__name__} was raised '
        'while importing it, in your code (frames outside t5pt and the libraries, most '
        f'recent call last):\n{users_frames(e)}'
      ) from e


def users_frames(error: BaseException) -> str:
  """`error` as a traceback of the frames in the user's own files (not t5pt's, Python's
  or an installed library's; all frames if none is the user's), then its type and
  message."""
  own = tuple(d + os.sep for d in logs.OWN_DIRS)  # t5pt's package and task registries
  stack = traceback.extract_tb(error.__traceback__)
  mine = [
    frame
    for frame in stack
    if not frame.filename.startswith('<')  # e.g. <frozen importlib._bootstrap>
    and logs.is_own_code(frame.filename)  # not Python's or an installed library's
    and not os.path.abspath(frame.filename).startswith(own)
  ] or stack
  lines = traceback.StackSummary.from_list(mine).format()
  lines += traceback.format_exception_only(type(error), error)
  return ''.join(lines).rstrip()


def get_provider(name: str) -> seqio.DatasetProviderBase:
  """Looks up a registered task or mixture, with a helpful error for unknown names."""
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in known:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise UserError(
      f'MIXTURE_OR_TASK_NAME={name!r} is not a registered task or mixture.'
      f'{hint} Set MIXTURE_OR_TASK_MODULE to the module that registers it '
      f'({len(known)} names are registered now).'
    )
  return seqio.get_mixture_or_task(name)


def converter_lengths(
  task_feature_lengths: Mapping[str, int], prompt_length: int
) -> dict[str, int]:
  """Token budget for the converter once the prompt has taken its encoder positions."""
  for key in ('inputs', 'targets'):
    if key not in task_feature_lengths:
      raise UserError(
        f"TASK_FEATURE_LENGTHS needs an {key!r} length, got {dict(task_feature_lengths)}."
      )
  inputs = task_feature_lengths['inputs']
  if inputs <= prompt_length:
    raise UserError(
      f"TASK_FEATURE_LENGTHS['inputs']={inputs} leaves no room for input "
      f'tokens after the PROMPT_LENGTH={prompt_length} prompt positions; the '
      "prompt counts in the encoder budget, so set TASK_FEATURE_LENGTHS['inputs'] "
      f'to at least {prompt_length + 1} (prompt + longest input).'
    )
  return {'inputs': inputs - prompt_length, 'targets': task_feature_lengths['targets']}


def get_dataset(
  name: str,
  task_feature_lengths: Mapping[str, int],
  split: str,
  *,
  prompt_length: int = 0,
  shuffle: bool = True,
  seed: Optional[int] = 0,
  repeat: bool = True,
  pack: bool = False,
  use_cached: bool = False,
) -> tf.data.Dataset:
  """Unbatched converted examples of a task or mixture split. Every host reads the same
  stream and keeps its rows of each global batch (partitioning.place_batch): the batches,
  and so the trained result, do not depend on how many hosts there are, and a run resumes
  exactly on another number of hosts."""
  provider = get_provider(name)
  lengths = converter_lengths(task_feature_lengths, prompt_length)
  if split not in provider.splits:
    raise UserError(f'{name!r} has no split {split!r}; it has {list(provider.splits)}.')
  ds = provider.get_dataset(
    lengths,
    split=split,
    use_cached=use_cached,
    shuffle=shuffle,
    seed=seed,
    num_epochs=None if repeat else 1,
    trim_output_features=True,
  )
  return seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)


def iterate_batches(
  ds: tf.data.Dataset, batch_size: int, *, drop_remainder: bool, skip_batches: int = 0
) -> Iterator[Batch]:
  """Yields numpy batches [batch_size, ...]; a short final batch is padded with empty
  (all-zero, zero-weight) rows so every batch has one shape and compiles once."""
  batches = ds.batch(batch_size, drop_remainder=drop_remainder).skip(skip_batches)
  for batch in batches.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    rows = next(iter(batch.values())).shape[0]
    if rows < batch_size:
      batch = {
        k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
      }
    yield batch


def vocabulary(name: str) -> seqio.Vocabulary:
  """The inputs vocabulary of a task or mixture."""
  return get_provider(name).output_features['inputs'].vocabulary
