"""Soft prompts: the module that prepends them and the initialisers users choose from.

Three small pieces, as in Lester et al.'s prompt-tuning code:
  * generation — the `Prompt` module owns the parameter `prompt` [prompt, embed];
  * combination — it is prepended to the embedded encoder input;
  * initialisation — functions below, applied once after the frozen base is loaded,
    because the vocabulary-based ones need the model's embedding table:

      init(rng, shape=(P, embed), embedding=[vocab, embed], vocabulary) -> [P, embed]
"""

import io
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import gin
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

PromptInitializer = Callable[..., np.ndarray]


class Prompt(nn.Module):
  """Prepends `length` trainable vectors to embedded inputs."""

  length: int
  features: int

  @nn.compact
  def __call__(
    self, embedded_inputs: jax.Array, per_example: Optional[jax.Array] = None
  ) -> jax.Array:
    """[batch, length, embed] -> [batch, prompt_length + length, embed].

    `per_example` [batch, prompt_length, embed] is used instead of the parameter.
    """
    batch = embedded_inputs.shape[0]
    if per_example is not None:
      prompt = jnp.asarray(per_example, embedded_inputs.dtype)
    else:
      prompt = self.param(
        'prompt',
        nn.with_logical_partitioning(nn.initializers.uniform(1.0), ('prompt', 'embed')),
        (self.length, self.features),
        jnp.float32,
      )
      prompt = jnp.broadcast_to(jnp.asarray(prompt, embedded_inputs.dtype), (batch,) + prompt.shape)
    return jnp.concatenate([prompt, embedded_inputs], axis=1)


@gin.configurable(module='prompts')
def random_uniform(rng, shape, embedding=None, vocabulary=None, scale: float = 0.5):
  """Uniform in [-scale, scale] (the paper's weakest but simplest initialiser)."""
  del embedding, vocabulary
  return np.asarray(jax.random.uniform(rng, shape, jnp.float32, -scale, scale))


@gin.configurable(module='prompts')
def sampled_vocab(rng, shape, embedding, vocabulary=None, population_size: int = 5000):
  """Each prompt vector is a distinct row drawn from the first `population_size` rows.

  SentencePiece ids are roughly frequency-ordered, so the first rows are the most common
  tokens, as in the paper. Ids 0-2 (pad, eos, unk) are never drawn.
  """
  del vocabulary
  first, last = 3, min(population_size, embedding.shape[0])
  if last - first < shape[0]:
    raise UserError(
      f'prompts.sampled_vocab: population_size={population_size} leaves '
      f'{last - first} candidate rows for a prompt of length {shape[0]}; '
      'raise population_size.'
    )
  rows = jax.random.choice(rng, np.arange(first, last), (shape[0],), replace=False)
  return np.asarray(embedding, np.float32)[np.asarray(rows)]


@gin.configurable(module='prompts')
def class_labels(
  rng,
  shape,
  embedding,
  vocabulary,
  labels: Sequence[str] = (),
  fallback: PromptInitializer = sampled_vocab,
):
  """Vector i is the mean embedding of label i's pieces; the rest come from `fallback`.

  This was the best initialiser in the paper. Labels that tokenize to several pieces
  (e.g. "not_entailment") are averaged over their pieces.
  """
  if not labels:
    raise UserError(
      'prompts.class_labels needs labels: bind '
      "prompts.class_labels.labels = ['positive', 'negative']."
    )
  if len(labels) > shape[0]:
    raise UserError(
      f'prompts.class_labels: {len(labels)} labels do not fit in a prompt '
      f'of length {shape[0]}; raise PROMPT_LENGTH or pass fewer labels.'
    )
  values = np.array(fallback(rng, shape, embedding, vocabulary), np.float32)
  table = np.asarray(embedding, np.float32)
  for i, label in enumerate(labels):
    ids = list(vocabulary.encode(label))
    if not ids:
      raise UserError(f'prompts.class_labels: label {label!r} encodes to no tokens.')
    values[i] = table[ids].mean(axis=0)
  return values


@gin.configurable(module='prompts')
def from_file(rng, shape, embedding=None, vocabulary=None, path: Optional[str] = None):
  """Loads a [P, embed] `.npy` array, e.g. one saved by google-research/prompt-tuning."""
  del rng, embedding, vocabulary
  setting = 'prompts.from_file.path'
  if not path or not fs.exists(path):
    raise UserError(
      f'{setting}={path!r} does not exist; point it at a '
      '.npy file of shape [PROMPT_LENGTH, emb_dim].'
    )
  values = read_npy(path, setting)
  if tuple(values.shape) != tuple(shape):
    raise UserError(
      f'prompts.from_file: {path} has shape {tuple(values.shape)} but the '
      f'prompt is {tuple(shape)} (PROMPT_LENGTH, emb_dim); set '
      f'PROMPT_LENGTH = {values.shape[0]} or use a matching file.'
    )
  return values


def read_npy(path: str, setting: str) -> np.ndarray:
  """The prompt in the `.npy` file `path` as float32 [P, embed]; a UserError naming
  `setting` (how the user named the file) unless the file holds a 2-D float array of
  finite values."""
  where = f'{setting}={path!r}'
  try:
    values = np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise UserError(f'{where} is not a numpy .npy array ({e}); save one with np.save.') from e
  if not isinstance(values, np.ndarray):  # An .npz archive.
    raise UserError(
      f'{where} is an .npz archive of {sorted(values.files)}; save the prompt alone with '
      'np.save(path, prompt).'
    )
  if values.ndim != 2 or not is_float(values.dtype):
    raise UserError(
      f'{where} holds a {values.dtype} array of shape {values.shape}; a prompt is a float '
      'array [prompt_length, emb_dim].'
    )
  with np.errstate(over='ignore'):  # What overflows float32 is counted as non-finite below.
    values = values.astype(np.float32)
  check_finite(values, where, 'use a prompt saved before training diverged, or another file')
  return values


def is_float(dtype) -> bool:
  """Whether `dtype` is a real floating-point type (ml_dtypes' bfloat16 included)."""
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.floating):
    return True
  if dtype.kind != 'V':  # Integers, booleans, complex numbers, strings, objects.
    return False
  try:
    ml_dtypes.finfo(dtype)
  except ValueError:
    return False
  return True


def check_finite(values: np.ndarray, where: str, fix: str) -> None:
  """A UserError naming `where` (the setting and file that hold `values`) and saying how
  many values are NaN or Inf, unless none is; `fix` says what to do instead."""
  finite = np.isfinite(values)
  if finite.all():
    return
  bad = int(finite.size - np.count_nonzero(finite))
  first = tuple(int(i) for i in np.argwhere(~finite)[0])
  raise UserError(
    f'{where} holds {bad} non-finite value(s) (NaN or Inf) of {finite.size}, the first at '
    f'index {first} ({values[first]}); {fix}.'
  )
