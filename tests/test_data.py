"""Data: prompt-aware length budget, feature conversion, packing, batching."""

import numpy as np
import pytest

import tasks.synthetic  # noqa: F401  (registers the tasks)
from t5pt.runtime import data
from t5pt.runtime.errors import UserError

LENGTHS = {'inputs': 24, 'targets': 10}


def test_prompt_counts_in_the_encoder_budget():
  assert data.converter_lengths(LENGTHS, 8) == {'inputs': 16, 'targets': 10}
  with pytest.raises(UserError, match='at least 25'):
    data.converter_lengths(LENGTHS, 24)
  with pytest.raises(UserError, match="'targets'"):
    data.converter_lengths({'inputs': 24}, 0)


def test_batches_have_the_converted_shapes_and_pad_the_last_one():
  ds = data.get_dataset(
    'synthetic_heldout_max', LENGTHS, 'validation', prompt_length=8, shuffle=False, repeat=False
  )
  batches = list(data.iterate_batches(ds, 100, drop_remainder=False))
  assert len(batches) == 6  # 512 examples
  last = batches[-1]
  assert last['encoder_input_tokens'].shape == (100, 16)
  assert last['decoder_target_tokens'].shape == (100, 10)
  assert (last['decoder_loss_weights'][12:] == 0).all()
  assert (last['decoder_loss_weights'][:12].sum(axis=1) == 2).all()  # letter + EOS
  first = batches[0]
  np.testing.assert_array_equal(
    first['decoder_input_tokens'][:, 1:], first['decoder_target_tokens'][:, :-1]
  )


def test_packing_emits_segments():
  ds = data.get_dataset('synthetic_pretrain_mixture', LENGTHS, 'train', pack=True)
  batch = next(data.iterate_batches(ds, 4, drop_remainder=True))
  assert batch['encoder_segment_ids'].max() >= 2
  assert {'encoder_positions', 'decoder_segment_ids'} <= set(batch)


def test_training_order_is_deterministic_and_skippable():
  make = lambda skip: data.iterate_batches(
    data.get_dataset('synthetic_pretrain_mixture', LENGTHS, 'train', seed=3),
    4,
    drop_remainder=True,
    skip_batches=skip,
  )
  a, b = make(0), make(2)
  next(a), next(a)
  np.testing.assert_array_equal(next(a)['encoder_input_tokens'], next(b)['encoder_input_tokens'])


def test_unknown_split():
  with pytest.raises(UserError, match="no split 'test'"):
    data.get_dataset('synthetic_heldout_max', LENGTHS, 'test')
