"""Decoding: cache equals no cache, beam 1 equals greedy, exhaustive beam search finds the
best sequence, sampling controls, per-example prompts equal running each prompt alone."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pt.model import decoding
from t5pt.model import models
from t5pt.model import network
from t5pt.runtime import partitioning
from t5pt.serving import inference
from tests.conftest import TINY


def _model(prompt_length=3, seed=0, **overrides):
  config = network.T5Config(**{**TINY, **overrides}, prompt_length=prompt_length)
  model = models.EncoderDecoderModel(config)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), 4, 4))
  return model, params


def _inputs(vocab=32, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, (3, 7)).astype(np.int32)
  tokens[1, 4:] = 0
  tokens[2, 2:] = 0
  return jnp.asarray(tokens)


def _predict(model, params, tokens, max_length=6, **config):
  fn = functools.partial(
    inference.predict_batch, model, max_length=max_length, config=inference.DecodeConfig(**config)
  )
  out, scores = jax.jit(fn)(params, tokens)
  return np.asarray(out), np.asarray(scores)


def test_greedy_with_cache_equals_greedy_without_cache():
  model, params = _model()
  tokens = _inputs()
  cached, cached_scores = _predict(model, params, tokens, max_length=8)
  uncached, uncached_scores = _predict(model, params, tokens, max_length=8, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_allclose(cached_scores, uncached_scores, rtol=1e-5, atol=1e-5)
  assert cached.shape == (3, 1, 8)


def test_scores_are_the_log_likelihood_of_the_decodes():
  model, params = _model()
  tokens = _inputs()
  out, scores = _predict(model, params, tokens, max_length=8)
  targets = out[:, 0]
  batch = {
    'encoder_input_tokens': tokens,
    'decoder_target_tokens': jnp.asarray(targets),
    'decoder_input_tokens': jnp.asarray(
      np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
    ),
  }
  np.testing.assert_allclose(
    scores[:, 0], inference.score_batch(model, params, batch), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize('use_cache', [True, False])
def test_beam_size_one_equals_greedy(use_cache):
  model, params = _model()
  tokens = _inputs(seed=1)
  greedy, greedy_scores = _predict(model, params, tokens, max_length=8)
  beam, beam_scores = _predict(
    model,
    params,
    tokens,
    max_length=8,
    method='beam',
    num_decodes=1,
    alpha=0.0,
    use_cache=use_cache,
  )
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-5, atol=1e-5)


def test_exhaustive_beam_search_finds_the_best_sequence():
  """With vocab 5 and 3 steps, a beam of 5**3 keeps every hypothesis: the search is exact."""
  vocab, steps, alpha = 5, 3, 0.6
  model, params = _model(vocab_size=vocab, seed=3)
  tokens = jnp.asarray([[2, 3, 4, 1], [4, 4, 1, 0]], jnp.int32)
  beams, scores = _predict(
    model, params, tokens, max_length=steps, method='beam', num_decodes=vocab**steps, alpha=alpha
  )

  logits_fn = jax.jit(model.logits)
  for row in range(2):
    best_score, best = -np.inf, None
    candidates = [
      seq
      for length in range(1, steps + 1)
      for seq in itertools.product(range(vocab), repeat=length)
      if (1 not in seq[:-1]) and (seq[-1] == 1 or length == steps)
    ]
    for seq in candidates:
      padded = np.zeros((1, steps), np.int32)
      padded[0, : len(seq)] = seq
      batch = {
        'encoder_input_tokens': tokens[row : row + 1],
        'decoder_input_tokens': np.concatenate([[[0]], padded[:, :-1]], axis=1),
        'decoder_target_tokens': np.ones_like(padded),
      }
      log_probs = jax.nn.log_softmax(logits_fn(params, batch))[0]
      total = sum(float(log_probs[i, t]) for i, t in enumerate(seq))
      normalised = total / float(decoding.brevity_penalty(alpha, len(seq)))
      if normalised > best_score:
        best_score, best = normalised, seq
    np.testing.assert_array_equal(beams[row, 0, : len(best)], best)
    assert scores[row, 0] == pytest.approx(best_score, abs=1e-4)
    assert (np.diff(scores[row]) <= 1e-6).all()  # Best first.


def test_sampling_controls():
  model, params = _model()
  tokens = _inputs(seed=2)
  greedy, _ = _predict(model, params, tokens)
  top1, _ = _predict(model, params, tokens, method='sample', top_k=1)
  np.testing.assert_array_equal(top1, greedy)
  nucleus, _ = _predict(model, params, tokens, method='sample', top_p=1e-6)
  np.testing.assert_array_equal(nucleus, greedy)
  a, a_scores = _predict(
    model, params, tokens, method='sample', num_decodes=4, temperature=2.0, seed=5
  )
  b, _ = _predict(model, params, tokens, method='sample', num_decodes=4, temperature=2.0, seed=5)
  np.testing.assert_array_equal(a, b)  # Seeded.
  assert a.shape == (3, 4, 6) and (np.diff(a_scores, axis=1) <= 1e-6).all()
  assert len({tuple(r) for r in a.reshape(12, 6)}) > 3  # Temperature 2 varies.


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.asarray(x[0] > decoding.NEG_INF / 2).tolist()
  assert kept(decoding.filter_logits(logits, top_k=2)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.7)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.9)) == [True, True, True, False]


def test_each_example_with_its_own_prompt_equals_running_that_prompt_alone():
  rng = np.random.default_rng(0)
  prompts = [
    rng.normal(size=(3, 16)).astype(np.float32),
    rng.normal(size=(5, 16)).astype(np.float32),
  ]
  stacked, mask = inference.stack_prompts(prompts)
  tokens = _inputs(seed=4)
  choice = np.array([1, 0, 1])
  model, params = _model(prompt_length=5)
  base = {k: v for k, v in partitioning.flatten(params).items() if k != network.PROMPT_PATH}
  fn = functools.partial(inference.predict_batch, model, max_length=6)
  mixed, mixed_scores = jax.jit(fn)(
    partitioning.unflatten(base),
    tokens,
    prompt=jnp.asarray(stacked[choice]),
    prompt_mask=jnp.asarray(mask[choice]),
  )
  for i, prompt_id in enumerate(choice):
    alone_model, _ = _model(prompt_length=prompts[prompt_id].shape[0])
    alone_params = partitioning.unflatten(
      {**base, network.PROMPT_PATH: jnp.asarray(prompts[prompt_id])}
    )
    alone, alone_scores = _predict(alone_model, alone_params, tokens[i : i + 1])
    np.testing.assert_array_equal(np.asarray(mixed)[i], alone[0])
    np.testing.assert_allclose(np.asarray(mixed_scores)[i], alone_scores[0], rtol=1e-5, atol=1e-5)
