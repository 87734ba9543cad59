"""Prompt tuning (Lester et al. 2021): P trained vectors prepended to the embedded encoder
input, `encoder/prompt/prompt` [prompt, embed]. Setting: network.T5Config.prompt_length
(PROMPT_LENGTH); initialisers and the Prompt module in t5pt/model/prompts.py. Exports as
a PEFT PROMPT_TUNING adapter (or prompt.npy beside an HF folder)."""

from typing import Optional

from t5pt.model import prompts
from t5pt.model.methods import base
from t5pt.runtime import checks

PROMPT_PATH = 'encoder/prompt/prompt'


class SoftPrompt(base.Method):
  name = 'prompt'
  order = 0
  leaves = ('prompt',)
  pattern = PROMPT_PATH
  axes = ('prompt',)
  must_train = False  # a fixed prompt (PROMPT_INIT from a file) may sit under trained LoRA
  peft_type = 'PROMPT_TUNING'

  def enabled(self, config) -> bool:
    return bool(config.prompt_length)

  def check(self, config) -> None:
    checks.integer(config.prompt_length, 'PROMPT_LENGTH (network.T5Config.prompt_length)', 0)

  def input_positions(self, config) -> int:
    return config.prompt_length

  def embedded_input(self, module, config, x, per_example: Optional[base.Array]):
    return prompts.Prompt(config.prompt_length, config.emb_dim, name='prompt')(x, per_example)

  def recognise(self, config, shapes, setting, path) -> dict:
    shape = shapes.get(PROMPT_PATH)
    return {'prompt_length': shape[0]} if shape else {}


METHOD = SoftPrompt()
