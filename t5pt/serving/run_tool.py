"""A trained prompt run as a tool:

    TOOLS = {'QA': @qa/tools.run(), 'Max': @max/tools.run()}
    qa/tools.run.path = '/runs/qa'
    max/tools.run.path = '/runs/max'

The call's argument is the run's input; the tool answers with its greedy decode. One base,
an orchestra of prompts: when the run was tuned on the base the main model already holds
(a prompt run or the bare base; or any of PROMPTS), `share_base` puts the tool's prompt on
that loaded base, so nothing more is read and each step's calls decode as one batch of
rows carrying the tool's prompt (serving/prompt_bank.py). Otherwise the tool loads its own
base when it is first called.

The run is read and checked when gin makes the tool (before anything large loads); a
batched tool runs on every process of a multi-host job (tool_decoding.run_calls).
"""

from typing import Optional, Sequence

import gin

from t5pt.model import network
from t5pt.runtime import checks
from t5pt.runtime import data
from t5pt.runtime import fs
from t5pt.runtime import vocabularies
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.serving import prompt_bank
from t5pt.tools import base

SETTING = 'tools.run'


class RunTool(base.Tool):
  """A prompt run that answers calls by decoding their arguments."""

  batched = True

  def __init__(self, path: str, max_length: Optional[int] = None, step: Optional[int] = None):
    checks.optional_integer(max_length, f'{SETTING}.max_length', 1)
    self.member = prompt_bank.read_member(path, path, SETTING, step)
    meta = self.member.meta
    lengths = (meta.task_feature_lengths if meta else None) or {}
    self.max_length = max_length or lengths.get('targets') or 64
    self._input_length = lengths.get('inputs') or 512  # counts the prompt, as in training
    self._bank: Optional[prompt_bank.PromptBank] = None

  def share_base(self, config: network.T5Config, params, base_path: str, mesh) -> bool:
    """Serves this tool on a base already loaded (`params` as `config` names them, on
    `mesh`), if it was tuned on that base; returns whether it was."""
    recorded = self.member.run.base_path() if self.member.run else base_path  # .npy: this one
    if recorded.rstrip('/') != base_path.rstrip('/'):
      return False
    self._bank = prompt_bank.PromptBank.on_loaded_base(
      [self.member], SETTING, config, params, base_path, mesh
    )
    return True

  def call_batch(self, arguments: Sequence[str]) -> list[str]:
    bank = self._served()
    vocabulary = self._task_vocabulary() or vocabularies.sentencepiece(
      bank.base_path, setting=f'the base of {SETTING}(path={self.member.path!r})'
    )
    rows = _rows_for(len(arguments), bank.mesh.shape['data'])
    inputs = [vocabulary.encode(argument) + [inference.EOS_ID] for argument in arguments]
    names = [self.member.name] * len(arguments)
    tokens, ids = bank.rows(inputs, names, self._input_length, rows)
    decoded, _ = bank.predict(tokens, ids, self.max_length, inference.DecodeConfig())
    return [vocabulary.decode(inference.until_eos(row[0])) for row in decoded[: len(arguments)]]

  def __call__(self, argument: str) -> str:
    return self.call_batch([argument])[0]

  def _served(self) -> prompt_bank.PromptBank:
    if self._bank is None:  # Not shared: the run's own base, loaded once.
      if self.member.run is None:
        raise base.ToolError(f'{self.member.path} is a bare prompt: serve it on its base')
      self._bank = prompt_bank.PromptBank({self.member.name: self.member.path}, SETTING)
    return self._bank

  def _task_vocabulary(self):
    meta = self.member.meta
    if meta and meta.mixture_or_task_name:
      data.import_task_modules(meta.mixture_or_task_module)
      return data.vocabulary(meta.mixture_or_task_name)
    return None


def _rows_for(calls: int, data_size: int) -> int:
  """Rows to decode `calls` in: a power of two (few shapes to compile), split evenly."""
  rows = max(8, 1 << (calls - 1).bit_length())
  return -(-rows // data_size) * data_size


@gin.configurable(module='tools')
def run(
  path: str = gin.REQUIRED, max_length: Optional[int] = None, step: Optional[int] = None
) -> base.Tool:
  """A prompt run (its MODEL_DIR, a checkpoint_<step>, or a .npy prompt with the main
  model's base) decoding each call's argument; max_length: the longest answer in tokens
  (default: the run's target length)."""
  scope = gin.current_scope_str()
  binding = f'{scope}/{SETTING}.path' if scope else f'{SETTING}.path'
  checks.string(path, binding)
  if not fs.exists(path):
    raise UserError(f'{binding} = {path!r}: there is no such run; give its MODEL_DIR.')
  return RunTool(path, max_length, step)


def share_base(tools, config, params, base_path: str, mesh) -> None:
  """Puts every run tool in `tools` onto the loaded base it was tuned on (see RunTool)."""
  for tool in tools.values():
    if isinstance(tool, RunTool):
      tool.share_base(config, params, base_path, mesh)


def share_loaded(tools, loaded, mesh) -> None:
  """share_base on a loaded CHECKPOINT_PATH (trained_model.LoadedModel), when its weights
  are the bare base's: a prompt run or the base itself (LoRA, IA3, ... change them)."""
  if loaded.run is None or set(loaded.run.params) <= {network.PROMPT_PATH}:
    share_base(tools, loaded.config, loaded.params, loaded.base_path, mesh)
