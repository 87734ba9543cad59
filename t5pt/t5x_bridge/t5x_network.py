"""t5pt's network as the module of real t5x's `models.EncoderDecoderModel`.

t5x (installed from git, beside t5pt) trains, decodes and evaluates with this module
and gin/t5x/*.gin; nothing here imports t5x. The class keeps t5pt's network (its
parameter names, axes and every tuning method) and adds what t5x expects of a module:

  * t5x's signatures: `__call__(..., *, enable_dropout, decode)`, `encode`, and `decode`
    with `decode=True, max_decode_length` for one-token steps under `mutable=['cache']`;
  * `init` returns plain `params` and their logical axis names in `params_axes`
    (`<name>_axes` leaves, as `flax.linen.partitioning.param_with_axes` writes them),
    which t5x's partitioner and Adafactor read;
  * the soft prompt's initial value from one of t5pt's initialisers (`prompt_init`, e.g.
    `prompts.from_file` for a prompt a t5pt run exported to .npy, or
    `prompts.sampled_vocab` over the embedding of `embedding_checkpoint`).

What trains is chosen in gin by `trainable_filter` (a t5x `MultiOptimizer` traversal),
from the same regexes as t5pt's TRAINABLE: by default what the tuning method adds.

t5x makes the decoding cache before the encoder runs, so under t5x the decoder projects
the encoder's keys and values at every step, as t5x's own network does; t5pt's runner
projects them once.
"""

import functools
import inspect
import re
from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

import gin
from t5pt.checkpoints import base_readers
from t5pt.checkpoints import opening
from t5pt.model import methods
from t5pt.model import network
from t5pt.model import prompts
from t5pt.runtime import data
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

Array = jax.Array

# t5x's `standard_logical_axis_rules(additional_rules=...)` for the axes the tuning methods
# add: replicated, as t5pt's runner has them.
ADDITIONAL_AXIS_RULES = tuple((axis, None) for axis in methods.axes())
gin.constant('t5x_network.ADDITIONAL_AXIS_RULES', ADDITIONAL_AXIS_RULES)
# t5x Adafactor's factoring of those axes: none (a prompt [prompt, embed] or a LoRA
# factor keeps a full second moment, as google-research/prompt-tuning does).
ADDITIONAL_FACTOR_RULES = {axis: 'none' for axis in methods.axes()}


# t5x's RestoreCheckpointConfig.assignment_map for restoring a base checkpoint: the tuned
# leaves (and their optimizer state) are not read from it but start from their
# initialisers (with fallback_to_scratch).
FRESH_TUNED_LEAVES = ((methods.fresh_leaves_pattern(), None),)
gin.constant('t5x_network.FRESH_TUNED_LEAVES', FRESH_TUNED_LEAVES)


@gin.configurable(module='t5x_network')
def factor_rules(standard=gin.REQUIRED) -> dict:
  """t5x Adafactor's `logical_factor_rules`: `standard` (t5x's) plus t5pt's axes."""
  return {**dict(standard), **ADDITIONAL_FACTOR_RULES}


class Transformer(network.Transformer):
  """`network.Transformer` with t5x's module interface (see the module docstring)."""

  cache_encoder_projections: bool = False
  prompt_init: Optional[prompts.PromptInitializer] = None
  embedding_checkpoint: Optional[str] = None
  vocabulary: Optional[object] = None
  prompt_seed: int = 0

  def init(self, rngs, *args, **kwargs):
    """Like flax's `init`, but returns {'params': plain arrays, 'params_axes': names}."""
    if self.config.int8_kernels:
      raise UserError(
        'network.T5Config.int8_kernels (INT8_BASE) is not supported under t5x: t5x restores '
        'float checkpoints as they are. Use t5pt.train for an int8 base.'
      )
    variables = flax.core.unfreeze(super().init(rngs, *args, **kwargs))
    boxed = variables.pop('params')
    params = nn.meta.unbox(boxed)
    if self.config.prompt_length and self.prompt_init is not None:
      params['encoder']['prompt']['prompt'] = self._initial_prompt()
    return {'params': params, 'params_axes': params_axes(boxed), **variables}

  def _initial_prompt(self) -> Array:
    """The prompt [P, embed] from `prompt_init`, computed on the host when the
    initialisation runs: t5x's shape-only traces (eval_shape, as in infer and eval,
    which restore the prompt) read nothing."""
    if not self.embedding_checkpoint and _needs_embedding(self.prompt_init):
      raise UserError(
        f'{getattr(self.prompt_init, "__name__", "The prompt initialiser")} draws on the '
        'base embedding: set t5x_network.Transformer.embedding_checkpoint = '
        '%INITIAL_CHECKPOINT_PATH.'
      )
    shape = (self.config.prompt_length, self.config.emb_dim)
    compute = functools.partial(
      _prompt_values,
      self.prompt_init,
      shape,
      self.embedding_checkpoint,
      self.vocabulary,
      self.prompt_seed,
    )
    return jax.pure_callback(compute, jax.ShapeDtypeStruct(shape, jnp.float32))

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Optional[Array] = None,
    decoder_segment_ids: Optional[Array] = None,
    encoder_positions: Optional[Array] = None,
    decoder_positions: Optional[Array] = None,
    *,
    enable_dropout: bool = True,
    decode: bool = False,
  ) -> Array:
    """Logits [batch, tgt_len, vocab]; decode=True instead makes an empty cache for
    [batch, tgt_len] decoding (t5x's `_compute_kv_cache`)."""
    del encoder_positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout=enable_dropout,
      decode=decode,
    )

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=True):
    """[batch, length] -> [batch, prompt_length + length, embed]."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, not enable_dropout)

  def decode(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    decoder_positions=None,
    enable_dropout=True,
    decode=False,
    max_decode_length=None,
  ):
    """Logits [batch, tgt_len, vocab]; with decode=True, one step [batch, 1] at the
    cache's position (t5x's `_compute_logits_from_slice`). Without a `prefill`
    argument t5x decodes with no decoder prompt (prompt_with_targets is not supported)."""
    del decoder_positions
    if decode and max_decode_length is None:
      max_decode_length = decoder_input_tokens.shape[1]
    return super().decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      enable_dropout=enable_dropout,
      decode=decode,
      max_decode_length=max_decode_length,
    )


def _prompt_values(initializer, shape, embedding_checkpoint, vocabulary, seed) -> np.ndarray:
  embedding = _embedding(embedding_checkpoint) if embedding_checkpoint else None
  values = initializer(jax.random.PRNGKey(seed), shape, embedding, vocabulary)
  return np.asarray(values, np.float32)


@functools.lru_cache(maxsize=2)
def _embedding(checkpoint_path: str) -> np.ndarray:
  """The base's token embedding [vocab, embed], read once per process however many
  devices ask for the prompt."""
  return opening.open_base(checkpoint_path, 't5x_network.Transformer.embedding_checkpoint').read(
    network.EMBEDDING_PATH
  )


def _needs_embedding(initializer) -> bool:
  parameter = inspect.signature(initializer).parameters.get('embedding')
  return parameter is not None and parameter.default is inspect.Parameter.empty


def params_axes(boxed_params) -> dict:
  """Boxed params -> {'.../<name>_axes': AxisMetadata(names)} (t5x's params_axes)."""
  flat = traverse_util.flatten_dict(
    flax.core.unfreeze(boxed_params), is_leaf=lambda _, x: isinstance(x, nn.Partitioned)
  )
  unnamed = [k for k, v in flat.items() if not isinstance(v, nn.Partitioned)]
  if unnamed:
    raise ValueError(f'Parameters without logical axis names: {unnamed[:3]}')
  return traverse_util.unflatten_dict(
    {
      path[:-1] + (f'{path[-1]}_axes',): flax_partitioning.AxisMetadata(names=tuple(v.names))
      for path, v in flat.items()
    }
  )


@gin.configurable(module='t5x_network')
def trainable_filter(
  config: network.T5Config = gin.REQUIRED, trainable: Optional[Sequence[str]] = None
) -> Callable[[str, object], bool]:
  """A `ModelParamTraversal` filter: parameters whose path fully matches a TRAINABLE regex,
  by default the ones the tuning method adds (`T5Config.tuned_parameters`)."""
  patterns = tuple(trainable) if trainable else config.tuned_parameters()
  if not patterns:
    raise UserError(
      'Nothing would train: network.T5Config adds no prompt or adapter and TRAINABLE is '
      'not set. Set PROMPT_LENGTH, a LoRA rule, or TRAINABLE.'
    )
  compiled = [re.compile(p) for p in patterns]
  return lambda path, _: any(c.fullmatch(path.strip('/')) for c in compiled)


# What a t5pt gin file means under real t5x (gin/t5x/tuning.gin binds these): the frozen
# base, the steps to train and the vocabulary, read from the same macros as t5pt's runner.


@gin.configurable(module='t5x_network')
def base_checkpoint(
  initial_checkpoint_path: Optional[str] = None, t5x_checkpoint_path: Optional[str] = None
) -> Optional[str]:
  """The checkpoint t5x restores the frozen base from (and the prompt initialiser reads):
  INITIAL_CHECKPOINT_PATH when it is a T5X checkpoint (or None: a base from scratch),
  else T5X_CHECKPOINT_PATH, the public T5X checkpoint of the file's model: t5x restores
  only T5X checkpoints, and t5pt's files point INITIAL_CHECKPOINT_PATH at the HF download."""
  if initial_checkpoint_path is None or _is_t5x_checkpoint(initial_checkpoint_path):
    return initial_checkpoint_path
  if not t5x_checkpoint_path:
    raise UserError(
      f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path!r} is not a T5X checkpoint, the '
      'only format t5x restores. Pass one, e.g. --gin.INITIAL_CHECKPOINT_PATH='
      '"\'gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000\'" (or '
      'T5X_CHECKPOINT_PATH), or train with python -m t5pt.train, which reads HF folders.'
    )
  print(
    f't5pt: t5x restores the base from T5X_CHECKPOINT_PATH={t5x_checkpoint_path!r} '
    f'(INITIAL_CHECKPOINT_PATH={initial_checkpoint_path!r} is not a T5X checkpoint).',
    flush=True,
  )
  return t5x_checkpoint_path


def _is_t5x_checkpoint(path: str) -> bool:
  try:
    opened = opening.open_base(path)
  except UserError:
    return False  # Missing (e.g. the HF download not made) or not a checkpoint.
  return not isinstance(opened, base_readers.HFCheckpoint)


@gin.configurable(module='t5x_network')
def steps_to_train(
  train_steps: int = gin.REQUIRED,
  model_dir: Optional[str] = None,
  initial_checkpoint_path: Optional[str] = None,
) -> int:
  """t5x's `relative_steps` that makes TRAIN_STEPS mean what it means to t5pt's runner:
  the steps to train from the base (t5x's own TRAIN_STEPS is absolute and includes the
  base's pretraining steps). Counted against MODEL_DIR's newest checkpoint, so a resumed
  run stops at the same step as an uninterrupted one."""
  base_step = opening.step_of(initial_checkpoint_path) if initial_checkpoint_path else 0
  done = max([opening.step_of(p) for p in _step_dirs(model_dir)] or [base_step])
  left = base_step + train_steps - done
  if left <= 0:
    raise UserError(
      f'MODEL_DIR={model_dir!r} already holds step {done}, the base step {base_step} plus '
      f'TRAIN_STEPS={train_steps}: this run is complete. Raise TRAIN_STEPS to train further.'
    )
  return left


def _step_dirs(model_dir: Optional[str]) -> list[str]:
  if not model_dir or not fs.isdir(model_dir):
    return []
  return [p for p in fs.glob(model_dir, 'checkpoint_*') if opening.STEP_DIR.match(fs.path(p).name)]


@gin.configurable(module='t5x_network')
def task_vocabulary(mixture_or_task_name: str = gin.REQUIRED, module=None):
  """The vocabulary of the task's `targets` feature: what t5pt's runner decodes with,
  handed to t5x's EncoderDecoderModel as its input and output vocabulary."""
  data.import_task_modules(module)
  return data.vocabulary(mixture_or_task_name)
