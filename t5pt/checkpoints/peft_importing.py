r"""Imports an HF PEFT LoRA adapter of a T5 as a t5pt run.

    python -m t5pt.peft_import --peft_dir=/adapters/mytask \
        --base=checkpoints/flan-t5-base --model_dir=/runs/mytask-lora

--peft_dir is what peft's save_pretrained writes: adapter_config.json and
adapter_model.safetensors (or adapter_model.bin, read with torch). --base is the T5 the
adapter was trained on, in any format opening recognises. --model_dir becomes a run
with one checkpoint, checkpoint_0, laid out as the trainer writes them: its params are the
adapter's LoRA leaves (lora_a = lora_A.weight.T [in, r], lora_b = lora_B.weight.T [r, out])
and its meta records the base and one LoRA rule per adapted kernel with that module's
rank and alpha (rank_pattern / alpha_pattern as PEFT resolves them; use_rslora's
alpha / sqrt(r) folded into alpha). opening.load, infer.sh, python -m t5pt.eval and
python -m t5pt.export use it as they use a trained run. It records no task: pass
MIXTURE_OR_TASK_NAME (and TASK_FEATURE_LENGTHS) to eval and infer.

An existing --model_dir is replaced only with --overwrite, and only if it is a run
t5pt.peft_import wrote (checkpoint_0 alone, recording its adapter); a training run or a
folder holding anything else is never replaced.

The run is for inference, evaluation and export, not for training further: it holds no
optimizer state, and the trainer refuses a MODEL_DIR whose newest checkpoint is step 0.
"""

import collections
import dataclasses
import io
import math
import re
from typing import Mapping, Optional

import jax
import numpy as np

from t5pt.checkpoints import hf_format
from t5pt.checkpoints import opening
from t5pt.checkpoints import run_checkpoints
from t5pt.checkpoints import safetensors_io
from t5pt.model.methods import lora
from t5pt.model import network
from t5pt.model import prompts
from t5pt.runtime import fs
from t5pt.runtime import partitioning
from t5pt.runtime.errors import UserError

CONFIG_FILE = 'adapter_config.json'
SAFETENSORS_FILE = 'adapter_model.safetensors'
BIN_FILE = 'adapter_model.bin'
IMPORT_STEP = 0
# LoraConfig's defaults, for configs that leave them out.
DEFAULT_RANK, DEFAULT_ALPHA = 8, 8

# adapter_config.json fields that turn on a LoRA variant t5pt's LoRA
# (y = x W + scale x A B on dense kernels) does not compute; set (truthy) means refused.
VARIANT_FIELDS = (
  'use_dora',
  'lora_bias',
  'use_qalora',
  'modules_to_save',
  'trainable_token_indices',
  'layer_replication',
  'alora_invocation_tokens',
  'target_parameters',
  'use_bdlora',
  'arrow_config',
  'kasa_config',
  'velora_config',
  'monteclora_config',
)
# init_lora_weights values under which PEFT rewrites the base weights when it adds the
# adapter, so the adapter only reproduces the model on that rewritten base.
BASE_REWRITING_INITS = ('pissa', 'corda', 'olora', 'loftq', 'lora_ga')
_WEIGHT_KEY = re.compile(r'base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight')


def read_adapter(peft_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json as a dict, {PEFT key: array}) of the adapter in `peft_dir`."""
  config_file = fs.join(peft_dir, CONFIG_FILE)
  if not fs.exists(config_file):
    raise UserError(
      f'{config_file} does not exist: --peft_dir should be a folder written '
      f"by peft's save_pretrained ({CONFIG_FILE} + {SAFETENSORS_FILE})."
    )
  try:
    config = fs.read_json(config_file)
  except ValueError as e:
    raise UserError(f'{config_file} is not valid JSON ({e}).') from e
  return config, _read_weights(peft_dir)


def _read_weights(peft_dir: str) -> dict[str, np.ndarray]:
  """{PEFT key: float32 array} of the adapter's weights file; a UserError naming the file
  and tensor if one is not a float tensor or holds NaN or Inf."""
  safetensors_file = fs.join(peft_dir, SAFETENSORS_FILE)
  if fs.exists(safetensors_file):
    weights = safetensors_io.SafetensorsFile(safetensors_file)
    return {key: _checked(weights.read(key), safetensors_file, key) for key in weights.keys()}
  bin_file = fs.join(peft_dir, BIN_FILE)
  if fs.exists(bin_file):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise UserError(
        f'{bin_file} needs torch to read. Install the CPU build (pip install '
        'torch), or save the adapter as safetensors (save_pretrained\'s '
        'default).'
      ) from e
    try:
      state = torch.load(io.BytesIO(fs.read_bytes(bin_file)), map_location='cpu', weights_only=True)
    except Exception as e:  # Whatever torch's unpickler raises for a damaged or foreign file.
      raise UserError(
        f'{bin_file} is not a readable PyTorch state dict ({type(e).__name__}: {e}).'
      ) from e
    if not isinstance(state, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state.values()
    ):
      raise UserError(f'{bin_file} is not a state dict of tensors ({type(state).__name__}).')
    weights = {}
    for key, value in state.items():
      if not value.is_floating_point():
        raise _not_float(bin_file, key, value.dtype, tuple(value.shape))
      weights[key] = _checked(value.float().numpy(), bin_file, key)
    return weights
  raise UserError(
    f'{peft_dir} has {CONFIG_FILE} but no weights: expected {SAFETENSORS_FILE} (or {BIN_FILE}).'
  )


def _checked(value: np.ndarray, file: str, key: str) -> np.ndarray:
  """A tensor of the adapter as float32, once it is seen to be a float tensor of finite
  values (a NaN or Inf in a LoRA factor turns every output it touches into NaN)."""
  if not prompts.is_float(value.dtype):
    raise _not_float(file, key, value.dtype, value.shape)
  value = np.asarray(value, np.float32)
  prompts.check_finite(
    value,
    f'--peft_dir: {file}, tensor {key!r},',
    'most likely it was saved from a training run that diverged; save the adapter again from '
    'a checkpoint from before that',
  )
  return value


def _not_float(file: str, key: str, dtype, shape) -> UserError:
  return UserError(
    f'--peft_dir: {file}, tensor {key!r}, is {dtype} {tuple(shape)}; LoRA weights are float '
    'tensors. Save the adapter with peft\'s save_pretrained.'
  )


def check_config(config: Mapping, source: str) -> None:
  """Raises a UserError unless `config` describes plain LoRA, which t5pt reproduces."""
  if config.get('peft_type') != 'LORA':
    raise UserError(
      f'{source}: peft_type is {config.get("peft_type")!r}; t5pt.peft_import reads LORA adapters.'
    )
  unsupported = [f'{field}={config[field]!r}' for field in VARIANT_FIELDS if config.get(field)]
  if config.get('bias', 'none') != 'none':
    unsupported.append(f'bias={config["bias"]!r}')
  init = config.get('init_lora_weights')
  if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
    unsupported.append(
      f'init_lora_weights={init!r} (PEFT rewrites the base weights; save '
      'with path_initial_model_for_weight_conversion for a plain adapter)'
    )
  # fan_in_fan_out needs no check: PEFT turns it off for torch.nn.Linear, which every
  # T5 layer is, so the weights are stored as [out, in] either way.
  if unsupported:
    raise UserError(
      f'{source} sets {"; ".join(unsupported)}, which t5pt does not '
      'support: it imports plain LoRA. Train the adapter without it, or merge '
      "it into the base with peft's merge_and_unload() and use the saved "
      'model as the base checkpoint.'
    )


def lora_weights(
  weights: Mapping[str, np.ndarray], source: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{HF module name: (lora_A.weight [r, in], lora_B.weight [out, r])}."""
  found = collections.defaultdict(dict)
  for key, value in weights.items():
    match = _WEIGHT_KEY.fullmatch(key)
    if not match:
      raise UserError(
        f'{source} holds {key!r}, which t5pt cannot import: it reads only '
        'LoRA weights of linear layers, base_model.model.<module>.lora_A.weight '
        'and .lora_B.weight.'
      )
    found[match['module']][match['side']] = value
  if not found:
    raise UserError(f'{source} holds no LoRA weights.')
  for module, sides in found.items():
    if set(sides) != {'A', 'B'}:
      missing = ({'A', 'B'} - set(sides)).pop()
      raise UserError(f'{source} lacks base_model.model.{module}.lora_{missing}.weight.')
  return {module: (sides['A'], sides['B']) for module, sides in found.items()}


def pattern_value(patterns: Optional[Mapping], module: str, default):
  """The value of the first key of a rank_pattern / alpha_pattern that matches `module`,
  as PEFT matches them (the key, a regex, ends the name at a dot boundary); `default`
  if none does."""
  for key, value in (patterns or {}).items():
    if re.match(rf'(.*\.)?({key})$', module):
      return value
  return default


def lora_parameters(
  config: Mapping,
  pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
  architecture: network.T5Config,
  kernel_shapes: Mapping[str, tuple[int, ...]],
  source: str,
) -> tuple[dict[str, np.ndarray], tuple]:
  """({t5x path: lora_a [in, r] or lora_b [r, out]}, lora_rules with one exact-path rule
  (path, r, alpha) per adapted kernel) for the adapter's weights on `architecture`."""
  paths = {module: path for path, module in hf_format.kernel_modules(architecture).items()}
  params, rules = {}, []
  for module, (a, b) in sorted(pairs.items()):
    if module not in paths:
      raise UserError(
        f'{source}: {module!r} is not a linear layer of the base T5; t5pt '
        'imports LoRA on attention q/k/v/o, MLP wi/wi_0/wi_1/wo and an untied '
        "lm_head (e.g. 'encoder.block.0.layer.0.SelfAttention.q')."
      )
    path, rank = paths[module], a.shape[0]
    fan_in, fan_out = kernel_shapes[path]
    if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
      raise UserError(
        f'{source}: {module!r} has lora_A {a.shape} and lora_B {b.shape}, '
        f'which do not fit the base layer ({fan_out} x {fan_in}). Is --base '
        'the model the adapter was trained on?'
      )
    configured = pattern_value(config.get('rank_pattern'), module, config.get('r', DEFAULT_RANK))
    if configured != rank:
      raise UserError(
        f'{source}: {module!r} has rank {rank} in its weights but {configured} '
        'in adapter_config.json (r / rank_pattern).'
      )
    alpha = float(
      pattern_value(config.get('alpha_pattern'), module, config.get('lora_alpha', DEFAULT_ALPHA))
    )
    if config.get('use_rslora'):
      alpha *= math.sqrt(rank)  # PEFT scales by alpha / sqrt(r), t5pt by alpha / r.
    prefix = path[: -len('kernel')]
    params[prefix + lora.LORA_A] = np.asarray(a, np.float32).T
    params[prefix + lora.LORA_B] = np.asarray(b, np.float32).T
    rules.append((re.escape(path), int(rank), alpha))
  return params, tuple(rules)


def import_adapter(
  peft_dir: str, base_path: str, model_dir: str, overwrite: bool = False
) -> network.T5Config:
  """Writes the PEFT LoRA adapter in `peft_dir` as a t5pt run at `model_dir` (see module
  docstring); returns the run's network config. Nothing is written unless it all fits."""
  check_model_dir(model_dir, overwrite)
  if not fs.exists(base_path):
    raise UserError(
      f'--base={base_path!r} does not exist; pass the T5 the adapter was '
      'trained on (an HF folder, a T5X checkpoint or a t5pt MODEL_DIR).'
    )
  source = fs.join(peft_dir, CONFIG_FILE)
  adapter_config, weights = read_adapter(peft_dir)
  check_config(adapter_config, source)
  pairs = lora_weights(weights, peft_dir)
  base = opening.open_base(base_path)
  architecture = base.reconcile(network.T5Config()).require_complete()
  params, rules = lora_parameters(adapter_config, pairs, architecture, base.shapes(), source)
  config = dataclasses.replace(
    architecture, lora_rules=rules, lora_dropout=float(adapter_config.get('lora_dropout', 0.0))
  )
  meta = run_checkpoints.RunMeta(
    step=IMPORT_STEP,
    trainable=tuple(sorted(params)),
    network_config=config,
    initial_checkpoint_path=fs.absolute(base_path),
    imported_from=fs.absolute(peft_dir),
  )
  _write_run(model_dir, params, meta, overwrite)
  return config


def check_model_dir(model_dir: str, overwrite: bool) -> None:
  """Raises a UserError unless `model_dir` may become the imported run: new, or (with
  `overwrite`) a run this module wrote, which holds only checkpoint_0 recording the
  adapter it came from. A training run, or a folder with anything else in it, is never
  replaced."""
  fs.check_replaceable(
    model_dir,
    '--model_dir',
    overwrite,
    _foreign,
    f'a run t5pt.peft_import wrote (only {run_checkpoints.STEP_PREFIX}_{IMPORT_STEP}, recording '
    'the adapter it came from)',
  )


def _foreign(model_dir: str) -> list[str]:
  """What in `model_dir` t5pt.peft_import did not write (see check_model_dir)."""
  names = fs.entries(model_dir)
  strangers = [name for name in names if name != f'{run_checkpoints.STEP_PREFIX}_{IMPORT_STEP}']
  if strangers or not names:
    return strangers
  try:
    imported = run_checkpoints.read_meta(model_dir, IMPORT_STEP).imported_from
  except UserError:
    imported = None
  return [] if imported else names


def _write_run(
  model_dir: str, params: Mapping[str, np.ndarray], meta: run_checkpoints.RunMeta, overwrite: bool
) -> None:
  """Saves checkpoint_0 (params and meta; no optimizer state) as a new run at
  `model_dir`, replacing an existing one only if `overwrite`. Orbax makes the step
  appear only once complete; if the save fails, `model_dir` is removed again."""
  check_model_dir(model_dir, overwrite)
  fs.remove(model_dir)  # Nothing, or a run this module wrote (check_model_dir).
  tree = partitioning.unflatten({k: jax.device_put(v) for k, v in params.items()})
  try:
    checkpointer = run_checkpoints.RunCheckpointer(fs.absolute(model_dir), keep=None)
    try:
      checkpointer.save(tree, None, meta)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
  except BaseException:
    fs.remove(model_dir)
    raise
