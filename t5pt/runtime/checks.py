"""Type and range checks of the values a user sets, before anything is written.

Each check names the value as the user set it: the gin macro and the binding it feeds,
e.g. `TRAIN_STEPS (trainer.train.train_steps)`, and says what would be accepted. gin
takes values as Python literals, so the commonest slip, a string without its inner
quotes, arrives as another type or fails to parse; both messages show the quoting.
"""

import re
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp

from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError

QUOTES = 'gin strings need inner quotes: --gin.MODEL_DIR="\'/runs/x\'"'
FLOAT_DTYPES = ('float32', 'bfloat16', 'float16')


def _fail(name: str, value: Any, wanted: str) -> UserError:
  return UserError(f'{name} = {value!r}: {wanted}.')


def integer(value: Any, name: str, minimum: Optional[int] = None) -> int:
  """An int (not a bool, not a float) of at least `minimum`."""
  bound = '' if minimum is None else f'{minimum} or more'
  if isinstance(value, bool) or not isinstance(value, int):
    example = f', e.g. {name.split()[0]}={max(minimum or 0, 1) * 100}'
    raise _fail(name, value, f'must be a whole number{f" ({bound})" if bound else ""}{example}')
  if minimum is not None and value < minimum:
    raise _fail(name, value, f'must be {bound}')
  return value


def optional_integer(value: Any, name: str, minimum: Optional[int] = None) -> Optional[int]:
  return None if value is None else integer(value, name, minimum)


def number(value: Any, name: str, low: float, high: float, *, include_high: bool = False) -> float:
  """A real number in [low, high) (or [low, high])."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _fail(name, value, f'must be a number in {_range(low, high, include_high)}')
  if not (low <= value < high or (include_high and value == high)):
    raise _fail(name, value, f'must be in {_range(low, high, include_high)}')
  return float(value)


def _range(low: float, high: float, include_high: bool) -> str:
  return f'[{low:g}, {high:g}{"]" if include_high else ")"}'


def positive_number(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float('inf'):
    raise _fail(name, value, 'must be a finite number greater than 0')
  return float(value)


def boolean(value: Any, name: str) -> bool:
  if not isinstance(value, bool):
    raise _fail(name, value, 'must be True or False')
  return value


def string(value: Any, name: str, *, optional: bool = False) -> Optional[str]:
  if value is None and optional:
    return None
  if not isinstance(value, str) or not value:
    raise _fail(name, value, f'must be a non-empty string ({QUOTES})')
  return value


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
  if value not in choices:
    raise _fail(name, value, f'must be one of {list(choices)}')
  return value


def float_dtype(value: Any, name: str) -> str:
  """A floating-point dtype name such as 'bfloat16'."""
  if isinstance(value, str):
    try:
      if jnp.issubdtype(jnp.dtype(value), jnp.floating):
        return value
    except TypeError:
      pass
  raise _fail(name, value, f'must be one of {list(FLOAT_DTYPES)}')


def regexes(value: Any, name: str) -> Optional[tuple[str, ...]]:
  """None, or a list of regular expressions (each compiled here)."""
  if value is None:
    return None
  if isinstance(value, str) or not isinstance(value, (list, tuple)):
    raise _fail(
      name, value, f"must be a list of regexes, e.g. ['encoder/prompt/prompt'] ({QUOTES})"
    )
  for pattern in value:
    if not isinstance(pattern, str):
      raise _fail(name, value, f'holds {pattern!r}, which is not a string')
    try:
      re.compile(pattern)
    except re.error as e:
      raise _fail(name, value, f'{pattern!r} is not a regular expression ({e})') from e
  return tuple(value)


def module_names(value: Any, name: str) -> None:
  """None, a module name, or a list of them."""
  names = [value] if isinstance(value, str) else value
  if value is not None and (
    not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names)
  ):
    raise _fail(name, value, f"must be a module name or a list of them, e.g. 'my_tasks' ({QUOTES})")


def feature_lengths(value: Any, name: str, *, optional: bool = False) -> None:
  """{'inputs': n, 'targets': m} with positive whole numbers."""
  if value is None and optional:
    return
  if not isinstance(value, Mapping) or set(value) != {'inputs', 'targets'}:
    raise _fail(name, value, "must be a dict like {'inputs': 512, 'targets': 128}")
  for key, length in value.items():
    integer(length, f"{name}['{key}']", 1)


def decode_config(config) -> None:
  """An inference.DecodeConfig's numbers (its method is checked when it is built)."""
  prefix = 'inference.DecodeConfig.'
  integer(config.num_decodes, prefix + 'num_decodes', 1)
  positive_number(config.temperature, prefix + 'temperature')
  integer(config.top_k, prefix + 'top_k', 0)
  number(config.top_p, prefix + 'top_p', 0.0, 1.0, include_high=True)
  if config.top_p == 0:
    raise _fail(prefix + 'top_p', 0, 'must be greater than 0 (1.0 keeps every token)')
  number(config.alpha, prefix + 'alpha', 0.0, float('inf'))
  boolean(config.use_cache, prefix + 'use_cache')
  integer(config.seed, prefix + 'seed')


REMAT_POLICIES = ('none', 'minimal', 'dots', 'full')  # network.REMAT_POLICIES' names


def network_config(config) -> None:
  """The options of a network.T5Config besides its tuning methods (each method checks its
  own settings) and its architecture sizes (from the model file or the checkpoint, and
  reconciled with it)."""
  number(config.dropout_rate, 'DROPOUT_RATE (network.T5Config.dropout_rate)', 0.0, 1.0)
  float_dtype(config.dtype, 'network.T5Config.dtype')
  choice(config.remat_policy, 'REMAT_POLICY (network.T5Config.remat_policy)', REMAT_POLICIES)
  for name in ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'vocab_size'):
    optional_integer(getattr(config, name), f'network.T5Config.{name}', 1)
  for name in ('num_encoder_layers', 'num_decoder_layers'):
    optional_integer(getattr(config, name), f'network.T5Config.{name}', 1)


def partition_config(config) -> None:
  integer(config.num_partitions, 'NUM_PARTITIONS (partitioning.PartitionConfig.num_partitions)', 1)


def batch_and_microbatches(batch_size: Any, num_microbatches: Any) -> None:
  """trainer.train's BATCH_SIZE and NUM_MICROBATCHES: whole numbers, the microbatches
  dividing the batch."""
  b = 'trainer.train.'
  integer(batch_size, f'BATCH_SIZE ({b}batch_size)', 1)
  integer(num_microbatches, f'NUM_MICROBATCHES ({b}num_microbatches)', 1)
  if batch_size % num_microbatches:
    raise UserError(
      f'NUM_MICROBATCHES ({b}num_microbatches) = {num_microbatches} does not divide '
      f'BATCH_SIZE={batch_size}; pick a divisor, e.g. NUM_MICROBATCHES='
      f'{max(d for d in range(1, num_microbatches + 1) if batch_size % d == 0)}.'
    )


def batch_on_mesh(batch_size: Any, num_microbatches: Any, mesh) -> None:
  """batch_and_microbatches, and the batch and each microbatch splitting evenly over the
  mesh's 'data' axis (what a train step's sharded batch needs)."""
  batch_and_microbatches(batch_size, num_microbatches)
  partitioning.check_batch_size(batch_size, mesh)
  partitioning.check_batch_size(
    batch_size // num_microbatches,
    mesh,
    f'the microbatch size BATCH_SIZE / NUM_MICROBATCHES ({batch_size} / {num_microbatches})',
  )


MODEL_MACROS = {
  'CHECKPOINT_PATH': "a run or a base checkpoint: --gin.CHECKPOINT_PATH=\"'/runs/x'\"",
  'PROMPTS': "{'name': run or .npy, ...}: each INPUT_FILE line with the prompt it names",
  'ENSEMBLE': '[run, run, ...]: every input with each prompt, combined',
}


def one_model(**macros) -> str:
  """The one macro (of CHECKPOINT_PATH, PROMPTS, ENSEMBLE) that names the model to use; a
  UserError unless exactly one is set."""
  given = [macro for macro, value in macros.items() if value is not None and value != '']
  if len(given) == 1:
    return given[0]
  ways = '; '.join(f'{macro} ({MODEL_MACROS[macro]})' for macro in macros)
  if not given:
    raise UserError(f'CHECKPOINT_PATH is not set. Name the model with one of {ways}.')
  raise UserError(f'{" and ".join(given)} are set together; set only one of {ways}.')


def inference_values(configurable: str, output_macro: str, values: Mapping[str, Any]) -> None:
  """The settings infer.sh and t5pt.eval share (`values`: the function's arguments by
  name; `configurable`: e.g. 'batch_inference.infer'; `output_macro`: the macro of its
  output_dir)."""

  def name(param: str, macro: Optional[str]) -> str:
    return f'{macro} ({configurable}.{param})' if macro else f'{configurable}.{param}'

  optional_strings = {
    'mixture_or_task_name': 'MIXTURE_OR_TASK_NAME',
    'input_file': 'INPUT_FILE',
    'vocabulary_path': 'VOCABULARY_PATH',
    'base_checkpoint_path': 'BASE_CHECKPOINT_PATH',
  }
  string(values['checkpoint_path'], name('checkpoint_path', 'CHECKPOINT_PATH'), optional=True)
  string(values['output_dir'], name('output_dir', output_macro))
  string(values['split'], name('split', 'SPLIT'))
  for param, macro in optional_strings.items():
    if param in values:
      string(values[param], name(param, macro), optional=True)
  module_names(
    values['mixture_or_task_module'], name('mixture_or_task_module', 'MIXTURE_OR_TASK_MODULE')
  )
  feature_lengths(
    values['task_feature_lengths'],
    name('task_feature_lengths', 'TASK_FEATURE_LENGTHS'),
    optional=True,
  )
  integer(values['batch_size'], name('batch_size', 'BATCH_SIZE'), 1)
  if 'chunk_batches' in values:
    integer(values['chunk_batches'], name('chunk_batches', None), 1)
  for param in ('use_cached_tasks', 'progress_bar'):
    if param in values:
      boolean(
        values[param], name(param, 'USE_CACHED_TASKS' if param == 'use_cached_tasks' else None)
      )
  float_dtype(values['frozen_dtype'], name('frozen_dtype', 'FROZEN_DTYPE'))
  decode_config(values['decode'])
  partition_config(values['partition'])
  paths = {'checkpoint_path': 'CHECKPOINT_PATH', 'output_dir': output_macro, **optional_strings}
  for param, macro in paths.items():
    if param != 'mixture_or_task_name' and isinstance(values.get(param), str):
      fs.check_gcs_reachable(values[param], macro)
