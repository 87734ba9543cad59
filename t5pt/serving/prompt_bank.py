"""Several trained prompts served on one frozen base: per-example prompts in one batch.

Prompt tuning's central advantage (Lester et al. 2021): the base is loaded once and every
example in a batch carries its own small prompt. A PromptBank reads the prompts (t5pt runs,
t5x checkpoints trained with gin/t5x, or bare [P, embed] `.npy` arrays), checks that each
is a float matrix of finite values and that they can share one model, loads that base
once, and decodes or scores rows that each name their prompt. Prompts of different lengths
are left-padded to the longest (inference.stack_prompts), so every row decodes exactly as
it would with its prompt alone.

Only prompts mix this way: LoRA, IA3 and deep prompts change the base's weights, which one
batch shares, so runs that train them are refused (decode each with CHECKPOINT_PATH).
"""

import dataclasses
import functools
from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from t5pt.checkpoints import opening
from t5pt.checkpoints import trained_model
from t5pt.model import models
from t5pt.model import network
from t5pt.model import prompts
from t5pt.runtime import data
from t5pt.runtime import distributed
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError
from t5pt.serving import inference
from t5pt.serving import tool_decoding

Entries = Union[Mapping[str, str], Sequence[str]]


@dataclasses.dataclass
class Member:
  """One named prompt: `prompt` [P, embed] and, unless it is a bare `.npy`, its run."""

  name: str
  path: str
  prompt: np.ndarray
  run: Optional[trained_model.TrainedRun]

  @property
  def step(self) -> Optional[int]:
    return self.run.step if self.run else None

  @property
  def meta(self):
    return self.run.meta if self.run else None


def named_entries(entries: Entries, macro: str) -> dict[str, str]:
  """PROMPTS / ENSEMBLE as {name: path}: a mapping as given, a list named by each path's
  last component (made unique with its position when two share it)."""
  if isinstance(entries, Mapping):
    named = dict(entries)
  elif isinstance(entries, (list, tuple)):
    stems = [str(p).rstrip('/').rsplit('/', 1)[-1].removesuffix('.npy') for p in entries]
    named = {
      (s if stems.count(s) == 1 else f'{s}#{i}'): p for i, (s, p) in enumerate(zip(stems, entries))
    }
  else:
    raise UserError(
      f"{macro}={entries!r}: expected {{'name': 'run dir or .npy', ...}} or a list of run "
      'directories.'
    )
  if not named:
    raise UserError(f'{macro} is empty; name at least one run directory or .npy prompt.')
  for name, path in named.items():
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
      raise UserError(
        f'{macro}: {name!r}: {path!r} is not a name and a path (both non-empty strings).'
      )
  return named


def read_member(name: str, path: str, macro: str, step: Optional[int] = None) -> Member:
  """The prompt `macro`[name] points at; a UserError if it is not a prompt-only run."""
  setting = f'{macro}[{name!r}]'
  if path.endswith('.npy'):
    if not fs.exists(path):
      raise UserError(f'{setting}={path!r} does not exist.')
    return Member(name, path, prompts.read_npy(path, setting), None)
  run = opening.open_run(path, step, setting)
  extra = sorted(k for k in run.params if k != network.PROMPT_PATH)
  if extra:
    raise UserError(
      f'{setting}={path!r} trains {len(extra)} parameter(s) besides the prompt, e.g. '
      f'{extra[0]}: LoRA, IA3, deep prompts or base weights change the model every row of a '
      'batch shares, so only prompt-only runs can be mixed. Decode that run on its own '
      '(CHECKPOINT_PATH).'
    )
  if run.prompt is None:
    raise UserError(f'{setting}={path!r} holds no soft prompt ({network.PROMPT_PATH}).')
  prompt = np.asarray(run.prompt, np.float32)
  prompts.check_finite(
    prompt,
    f'{setting}={path!r} (its prompt at step {run.step})',
    'name a checkpoint from before training diverged (MODEL_DIR/checkpoint_<step>)',
  )
  return Member(name, path, prompt, run)


def _base_network(member: Member) -> Optional[network.T5Config]:
  """The network a run was trained on, without its prompt (None: a .npy or an old run)."""
  config = member.run.meta.network_config if member.run else None
  return dataclasses.replace(config, prompt_length=0) if config else None


def common_base(members: Sequence[Member], base_checkpoint_path: Optional[str], macro: str) -> str:
  """The one base every member was trained on: BASE_CHECKPOINT_PATH when set, else the
  base all runs record (a UserError when they record different ones)."""
  if base_checkpoint_path:
    return base_checkpoint_path
  bases = {m.name: m.run.base_path() for m in members if m.run}
  if not bases:
    raise UserError(
      f'{macro} names only .npy prompts, which do not record their base: set '
      'BASE_CHECKPOINT_PATH to the checkpoint they were trained on.'
    )
  if len(set(bases.values())) > 1:
    listed = ', '.join(f'{name}: {base}' for name, base in bases.items())
    raise UserError(
      f'The runs in {macro} were trained on different bases ({listed}); one batch shares '
      'one frozen model. Serve each base separately, or, if these are copies of one '
      'checkpoint, set BASE_CHECKPOINT_PATH to it.'
    )
  return next(iter(bases.values()))


def _check_networks(members: Sequence[Member], base: network.T5Config, macro: str) -> None:
  """Every run's network must be the base's, and every prompt as wide as its embeddings."""
  for m in members:
    trained = _base_network(m)
    if trained is not None:
      differing = [
        f'{f}: {getattr(trained, f)} vs {getattr(base, f)}'
        for f in network.ARCHITECTURE_FIELDS
        if getattr(trained, f) is not None and getattr(trained, f) != getattr(base, f)
      ]
      if differing:
        raise UserError(
          f'{macro}[{m.name!r}]={m.path!r} was trained on another network than the base '
          f'({", ".join(differing)}); it cannot share this model.'
        )
    if m.prompt.shape[1] != base.emb_dim:
      raise UserError(
        f'{macro}[{m.name!r}]={m.path!r} is a prompt of width {m.prompt.shape[1]}, but the '
        f'base embeds tokens in {base.emb_dim} dimensions; it was made for another model.'
      )


class PromptBank:
  """Named prompts on one frozen base, loaded once.

  `prompts` [K, P_max, embed] and `mask` [K, P_max] are the left-padded stack; a batch row
  uses prompt `ids[row]`. `config` is the base network with prompt_length = P_max.
  """

  def __init__(
    self,
    entries: Entries,
    macro: str,
    base_checkpoint_path: Optional[str] = None,
    dtype: str = 'float32',
    mesh: Optional[jax.sharding.Mesh] = None,
    steps: Optional[Mapping[str, int]] = None,
    before_load: Callable[[], object] = lambda: None,
  ):
    """`steps`: the checkpoint step to read of each named run (default: its newest).
    `before_load` is called once every prompt is read and checked, before the base is
    loaded: a caller checks its own inputs there (infer its INPUT_FILE)."""
    named = named_entries(entries, macro)
    steps = steps or {}
    self.members = [read_member(n, p, macro, steps.get(n)) for n, p in named.items()]
    self.names = tuple(m.name for m in self.members)
    self.macro = macro
    self.mesh = mesh or partitioning.PartitionConfig().make_mesh()
    self.base_path = common_base(self.members, base_checkpoint_path, macro)
    setting = 'BASE_CHECKPOINT_PATH' if base_checkpoint_path else f'the base {macro} records'
    trained = next((c for c in map(_base_network, self.members) if c), network.T5Config())
    checkpoint = opening.open_base(self.base_path, setting)
    base_config = checkpoint.reconcile(trained).require_complete()
    _check_networks(self.members, base_config, macro)
    before_load()
    # Everything is checked: only now is the (large) base read, once.
    base_config, params = checkpoint.load_model(base_config, dtype, self.mesh)
    self._serve(base_config, params)

  @classmethod
  def on_loaded_base(
    cls, members: Sequence[Member], macro: str, config: network.T5Config, params, base_path, mesh
  ) -> 'PromptBank':
    """Prompts served on a base already loaded (`config`, `params` on `mesh`, read from
    `base_path`): nothing more is read. The members must have been trained on it."""
    bank = cls.__new__(cls)
    bank.members, bank.macro, bank.mesh = list(members), macro, mesh
    bank.names = tuple(m.name for m in members)
    bank.base_path = common_base(members, base_path, macro)
    _check_networks(bank.members, config, macro)
    bank._serve(config, params)
    return bank

  def _serve(self, base_config: network.T5Config, params) -> None:
    """The model, with the prompts stacked, on the loaded base."""
    self.params = params
    stacked, mask = inference.stack_prompts([m.prompt for m in self.members])
    self.config = dataclasses.replace(base_config, prompt_length=stacked.shape[1])
    self.model = models.EncoderDecoderModel(self.config)
    replicated = partitioning.replicated(self.mesh)
    self._prompts = jax.device_put(stacked, replicated)
    self._mask = jax.device_put(mask, replicated)
    self._rows = partitioning.batch_sharding(self.mesh)

  def index(self, name: str) -> int:
    return self.names.index(name)

  def prompt_length(self, name: str) -> int:
    return self.members[self.index(name)].prompt.shape[0]

  def recorded(self, field: str) -> dict[str, object]:
    """{member name: what its run's record says of `field`} for runs that record it."""
    return {
      m.name: getattr(m.meta, field) for m in self.members if m.meta and getattr(m.meta, field)
    }

  def common(self, field: str):
    """What every run that records `field` (a RunMeta field: the task, its feature lengths)
    records; None if none does; a UserError naming the differences otherwise."""
    recorded = self.recorded(field)
    values = list(recorded.values())
    if any(v != values[0] for v in values):
      macro = field.upper()
      listed = ', '.join(f'{name}: {value!r}' for name, value in recorded.items())
      raise UserError(f'The runs in {self.macro} record different {macro} ({listed}); set {macro}.')
    return values[0] if values else None

  def task_and_lengths(
    self, mixture_or_task_name, mixture_or_task_module, task_feature_lengths, task_from_runs=True
  ) -> tuple[Optional[str], Optional[dict]]:
    """The task and feature lengths to use: as given, else what the runs all record (the
    task only when `task_from_runs`). Imports the task modules (given, or the runs') so
    that the tasks are registered; as trained_model.task_and_lengths for one run."""
    data.import_task_modules(mixture_or_task_module or self._recorded_modules())
    task = mixture_or_task_name
    if task_from_runs:
      task = task or self.common('mixture_or_task_name')
    return task, task_feature_lengths or self.common('task_feature_lengths')

  def _recorded_modules(self) -> list[str]:
    """The task modules the runs record."""
    modules = []
    for value in self.recorded('mixture_or_task_module').values():
      for module in [value] if isinstance(value, str) else value:
        if module not in modules:
          modules.append(module)
    return modules

  def common_vocabulary(self):
    """The input vocabulary of the runs' recorded tasks (None when none records a task); a
    UserError when they tokenize differently."""
    tasks = self.recorded('mixture_or_task_name')
    found = {name: data.vocabulary(task) for name, task in tasks.items()}
    vocabs = list(found.values())
    if any(v != vocabs[0] for v in vocabs):
      listed = ', '.join(f'{name}: {tasks[name]}' for name in found)
      raise UserError(
        f'The runs in {self.macro} were trained on tasks with different vocabularies '
        f'({listed}); set VOCABULARY_PATH to the tokenizer the input file needs.'
      )
    return vocabs[0] if vocabs else None

  def check_fits(self, input_length: int) -> None:
    """Every prompt must leave room for input tokens within TASK_FEATURE_LENGTHS['inputs']
    (which counts the prompt, as in training)."""
    for m in self.members:
      if m.prompt.shape[0] >= input_length:
        raise UserError(
          f"TASK_FEATURE_LENGTHS['inputs']={input_length} leaves no input tokens after "
          f'{self.macro}[{m.name!r}]\'s {m.prompt.shape[0]} prompt positions; raise it.'
        )

  def steps(self) -> dict[str, Optional[int]]:
    return {m.name: m.step for m in self.members}

  def rows(
    self, inputs: Sequence[Sequence[int]], names: Sequence[str], input_length: int, rows: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """A batch for predict / score: (tokens [rows, input_length - shortest prompt], prompt
    ids [rows]). Input i (token ids ending in EOS) uses prompt names[i] and is trimmed to
    input_length minus that prompt's length, as its run alone trims it; rows past the
    inputs are padding."""
    width = input_length - min(m.prompt.shape[0] for m in self.members)
    tokens = np.zeros((rows, width), np.int32)
    ids = np.zeros((rows,), np.int32)
    for row, (ids_in, name) in enumerate(zip(inputs, names)):
      fitted = fit(ids_in, input_length - self.prompt_length(name))
      tokens[row, : len(fitted)] = fitted
      ids[row] = self.index(name)
    return tokens, ids

  def predict(
    self, tokens: np.ndarray, ids: np.ndarray, max_length: int, decode: inference.DecodeConfig
  ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes tokens [rows, length], row r with prompt ids[r]: (tokens [rows, num_decodes,
    max_length], scores [rows, num_decodes]) as numpy on every process."""
    placed = partitioning.place_batch({'tokens': tokens, 'ids': ids.astype(np.int32)}, self._rows)
    fn = _predict_fn(self.model, max_length, decode)
    return distributed.fetch(
      fn(self.params, self._prompts, self._mask, placed['tokens'], placed['ids'])
    )

  def decode_with_tools(
    self,
    tokens: np.ndarray,
    ids: np.ndarray,
    max_length: int,
    decode: inference.DecodeConfig,
    use: tool_decoding.ToolUse,
    vocabulary,
  ) -> list[tool_decoding.Decoded]:
    """Decodes tokens [rows, length], row r with prompt ids[r], running the calls each row
    writes (tool_decoding.py)."""
    placed = partitioning.place_batch({'tokens': tokens, 'ids': ids.astype(np.int32)}, self._rows)
    prompts, mask = _gather(self._prompts, self._mask, placed['ids'])
    return tool_decoding.decode_with_tools(
      self.model, self.params, placed['tokens'], vocabulary, max_length, use, decode, prompts, mask
    )

  def score(self, tokens: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Log-likelihood [rows] of targets [rows, target_length] (zero-padded, with EOS)
    given tokens [rows, length], row r with prompt ids[r]."""
    decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    batch = {
      'encoder_input_tokens': tokens,
      'decoder_input_tokens': decoder_inputs,
      'decoder_target_tokens': targets,
      'ids': ids.astype(np.int32),
    }
    placed = partitioning.place_batch(batch, self._rows)
    ids = placed.pop('ids')
    return distributed.fetch(
      _score_fn(self.model)(self.params, self._prompts, self._mask, placed, ids)
    )


@functools.lru_cache(maxsize=None)
def _predict_fn(model: models.EncoderDecoderModel, max_length: int, decode: inference.DecodeConfig):
  def predict(params, prompts, mask, tokens, ids):
    return inference.predict_batch(
      model, params, tokens, max_length, decode, prompt=prompts[ids], prompt_mask=mask[ids]
    )

  return jax.jit(predict)


@jax.jit
def _gather(prompts, mask, ids):
  """Each row's prompt [rows, P, embed] and mask [rows, P] from the stack."""
  return prompts[ids], mask[ids]


@functools.lru_cache(maxsize=None)
def _score_fn(model: models.EncoderDecoderModel):
  def score(params, prompts, mask, batch, ids):
    return inference.score_batch(model, params, batch, prompt=prompts[ids], prompt_mask=mask[ids])

  return jax.jit(score)


def fit(tokens: Sequence[int], budget: int) -> list[int]:
  """Input ids ending in EOS, trimmed to `budget` as seqio's append_eos_after_trim does."""
  tokens = list(tokens)
  if len(tokens) <= budget:
    return tokens
  return tokens[: budget - 1] + [inference.EOS_ID]
