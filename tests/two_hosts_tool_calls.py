"""One host of a two-host decode with tools (tests/test_tool_decoding.py starts both).

The decoder is scripted (as in test_tool_decoding.py) to write a call of `Who`, a tool that
answers with the process that ran it, then of the calculator. Prints the decoded rows as
one JSON line; both processes must print process 0's answers.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from absl import app

from t5pt.model import models
from t5pt.model import network
from t5pt.runtime import distributed
from t5pt.runtime import partitioning
from t5pt.serving import inference
from t5pt.serving import tool_decoding
from t5pt.tools import base
from t5pt.tools import calculator
from tests.conftest import TINY

VOCAB = seqio.ByteVocabulary()
SCRIPTS = ['[Who() -> ?????????] then [Calculator(6*7) -> ??] end', 'plain']


class Who(base.Tool):
  def __call__(self, argument: str) -> str:
    return f'process {jax.process_index()}'


def scripted_step_functions(model, params, encoded, encoder_tokens, prompt_mask, length, cache):
  ids = np.zeros((len(SCRIPTS), 64), np.int32)
  for row, text in enumerate(SCRIPTS):
    ids[row, : len(text) + 1] = VOCAB.encode(text) + [1]

  def step(tokens, index, state):
    script = jnp.asarray(ids)[jnp.arange(tokens.shape[0]) % len(SCRIPTS), index]
    return jax.nn.one_hot(script, VOCAB.vocab_size) * 10.0, state

  return jnp.zeros(()), step


def main(argv):
  del argv
  distributed.initialize()
  inference.step_functions = scripted_step_functions
  mesh = partitioning.PartitionConfig().make_mesh()
  model = models.EncoderDecoderModel(network.T5Config(**{**TINY, 'vocab_size': VOCAB.vocab_size}))
  replicated = partitioning.replicated(mesh)
  params = jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: np.asarray(x)[index]),
    nn.unbox(model.init(jax.random.PRNGKey(0), 8, 8)),
  )
  rows = np.full((2, 8), 5, np.int32)
  placed = partitioning.place_batch({'rows': rows}, partitioning.batch_sharding(mesh))['rows']
  use = tool_decoding.ToolUse({'Who': Who(), 'Calculator': calculator.Calculator()})
  decoded = tool_decoding.decode_with_tools(model, params, placed, VOCAB, 60, use)
  print(json.dumps([[row.text, [call.text for call in row.calls]] for row in decoded]))


if __name__ == '__main__':
  distributed.define_flags()
  app.run(main)
