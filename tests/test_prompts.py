"""Prompt initialisers produce the documented values."""

import os

import jax
import numpy as np
import pytest
import seqio

from t5pt.model import prompts
from t5pt.runtime.errors import UserError
from tests.conftest import INTEROP

EMBEDDING = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
SHAPE = (6, 8)


def test_random_uniform_is_bounded_seeded_and_varied():
  a = prompts.random_uniform(jax.random.PRNGKey(0), SHAPE, scale=0.5)
  b = prompts.random_uniform(jax.random.PRNGKey(0), SHAPE, scale=0.5)
  np.testing.assert_array_equal(a, b)
  assert a.shape == SHAPE and np.abs(a).max() <= 0.5 and a.std() > 0.1


def test_sampled_vocab_takes_distinct_rows_from_the_top_n():
  values = prompts.sampled_vocab(jax.random.PRNGKey(1), SHAPE, EMBEDDING, population_size=20)
  rows = [int(np.flatnonzero((EMBEDDING == v).all(axis=1))[0]) for v in values]
  assert len(set(rows)) == SHAPE[0]
  assert all(3 <= r < 20 for r in rows)


def test_sampled_vocab_population_too_small():
  with pytest.raises(UserError, match='population_size'):
    prompts.sampled_vocab(jax.random.PRNGKey(1), SHAPE, EMBEDDING, population_size=5)


def test_class_labels_average_multi_piece_labels_and_fill_the_rest():
  vocab = seqio.ByteVocabulary()
  values = prompts.class_labels(jax.random.PRNGKey(2), SHAPE, EMBEDDING, vocab, labels=['a', 'no'])
  a, n, o = (ord(c) + 3 for c in 'ano')
  np.testing.assert_allclose(values[0], EMBEDDING[a])
  np.testing.assert_allclose(values[1], (EMBEDDING[n] + EMBEDDING[o]) / 2, rtol=1e-6)
  fallback = prompts.sampled_vocab(jax.random.PRNGKey(2), SHAPE, EMBEDDING)
  np.testing.assert_array_equal(values[2:], fallback[2:])


def test_class_labels_errors():
  vocab = seqio.ByteVocabulary()
  with pytest.raises(UserError, match='needs labels'):
    prompts.class_labels(jax.random.PRNGKey(0), SHAPE, EMBEDDING, vocab)
  with pytest.raises(UserError, match='do not fit'):
    prompts.class_labels(jax.random.PRNGKey(0), (1, 8), EMBEDDING, vocab, labels=['a', 'b'])


PROMPT_FILE = os.path.join(INTEROP, 't5x_tiny', 'prompt_5x256.npy')


@pytest.mark.skipif(not os.path.exists(PROMPT_FILE), reason='../shared/interop is absent')
def test_from_file_reads_a_prompt_tuning_npy_exactly():
  values = prompts.from_file(None, (5, 256), path=PROMPT_FILE)
  original = np.load(PROMPT_FILE)
  assert original.dtype == np.float64 and values.dtype == np.float32
  np.testing.assert_array_equal(values, original.astype(np.float32))
  with pytest.raises(UserError, match='PROMPT_LENGTH = 5'):
    prompts.from_file(None, (100, 256), path=PROMPT_FILE)


def test_from_file_missing_path():
  with pytest.raises(UserError, match='does not exist'):
    prompts.from_file(None, SHAPE, path='/no/prompt.npy')
