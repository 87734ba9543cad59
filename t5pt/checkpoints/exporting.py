r"""Exports a trained run for use outside t5pt.

    python -m t5pt.export --model_dir=/runs/x --prompt_npy=/out/prompt.npy
    python -m t5pt.export --model_dir=/runs/x --hf_dir=/out/flan-t5-base-mytask
    python -m t5pt.export --model_dir=/runs/x --peft_dir=/out/mytask-prompt

  --prompt_npy  the soft prompt, float32 [PROMPT_LENGTH, d_model] (the format the
                prompt-tuning library and PROMPT_INIT=@prompts.from_file read).
  --hf_dir      a transformers T5 folder: the base model with every trained base parameter,
                LoRA and IA3 merged in (config.json, safetensors shards, tokenizer files
                copied from an HF base), plus prompt.npy when the run trained a prompt. HF
                T5 has no soft prompt, so feed it as `inputs_embeds` (docs/checkpoints.md) or use
                --peft_dir.
  --peft_dir    an HF PEFT adapter (adapter_config.json + adapter_model.safetensors) that
                peft.PeftModel.from_pretrained loads onto the base T5:
                  LoRA runs: a LORA adapter, each adapted kernel with its own rank and alpha
                    (rank_pattern / alpha_pattern). PEFT cannot put a soft prompt in the
                    same adapter, so a run that also trained one gets prompt.npy beside it
                    (feed it as with --hf_dir). Load it onto the original base, not onto
                    --hf_dir, which already has the LoRA merged in.
                  prompt-only runs: a PROMPT_TUNING adapter, for the base or --hf_dir.
                IA3 runs cannot be exported this way; --hf_dir merges them.

The base is the run's INITIAL_CHECKPOINT_PATH (recorded in each checkpoint) unless --base
is given; it is read one tensor at a time, so exporting an 11B model needs host memory for
one shard (--max_shard_size) and its serialised bytes, not the model. Every output may be
local or a gs:// URI (t5pt.runtime.fs). Every output is checked before anything is written. An
existing one is replaced only with --overwrite and only if t5pt wrote it: a .npy file
(--prompt_npy), a folder holding t5pt_export.json and the files an export writes
(--hf_dir), one holding just t5pt's adapter files (--peft_dir); a folder holding anything
else is never replaced. Outputs appear atomically: on local disk a folder is built
next to its destination and renamed into place once complete; on an object store it is
complete once its marker, the file written last, exists (t5pt_export.json in --hf_dir,
adapter_config.json in --peft_dir).
"""

import collections
import contextlib
import io
import os
import re
from typing import Iterator, Mapping, Optional

import numpy as np

from t5pt.checkpoints import base_readers
from t5pt.checkpoints import hf_format
from t5pt.checkpoints import opening
from t5pt.checkpoints import safetensors_io
from t5pt.checkpoints import trained_model
from t5pt.model import methods
from t5pt.model.methods import lora
from t5pt.model import network
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

TOKENIZER_FILES = (
  'spiece.model',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
)
HF_MARKER = 't5pt_export.json'  # Written last into --hf_dir.
PEFT_MARKER = 'adapter_config.json'  # Written last into --peft_dir.


PEFT_FILES = (PEFT_MARKER, 'adapter_model.safetensors', 'prompt.npy')  # All t5pt writes there.
# What t5pt writes into --hf_dir (safetensors_io.write_sharded's shards and index).
HF_FILES = re.compile(
  r'model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|config\.json|'
  r'generation_config\.json|prompt\.npy|'
  + '|'.join(re.escape(name) for name in (*TOKENIZER_FILES, HF_MARKER))
)
NPY_MAGIC = b'\x93NUMPY'


def _hf_foreign(folder: str) -> list[str]:
  """What in `folder` a t5pt --hf_dir export did not write: everything unless it holds the
  marker, else the files an export has no name for."""
  names = fs.entries(folder)
  if names and HF_MARKER not in names:
    return names
  return [name for name in names if not HF_FILES.fullmatch(name)]


def _peft_foreign(folder: str) -> list[str]:
  """What in `folder` a t5pt --peft_dir export did not write. PEFT's save_pretrained
  writes an adapter_config.json too, so the marker must also hold exactly the fields
  t5pt writes."""
  names = fs.entries(folder)
  strangers = [name for name in names if name not in PEFT_FILES]
  if strangers or not names:
    return strangers
  if PEFT_MARKER not in names:
    return names
  try:
    fields = set(fs.read_json(fs.join(folder, PEFT_MARKER)))
  except (UserError, TypeError):
    return [PEFT_MARKER]
  written = (
    set(_lora_adapter_config({'m': (1, 1)}, 0.0, '')),
    set(_prompt_adapter_config(1, 1, network.T5Config(), '')),
  )
  return [] if fields in written else [PEFT_MARKER]


OUTPUT_DIRS = {  # flag: (marker, what in it t5pt did not write, the folders it replaces)
  '--hf_dir': (HF_MARKER, _hf_foreign, f'a folder t5pt.export wrote (holding its {HF_MARKER})'),
  '--peft_dir': (
    PEFT_MARKER,
    _peft_foreign,
    f'an adapter t5pt.export wrote ({", ".join(PEFT_FILES)} and nothing else)',
  ),
}


def check_output_dir(path: str, flag: str, overwrite: bool) -> None:
  """Raises a UserError unless `path` may become the output folder `flag` ('--hf_dir' or
  '--peft_dir') names: new, or (with `overwrite`) a folder t5pt.export wrote there."""
  _, foreign, what = OUTPUT_DIRS[flag]
  fs.check_replaceable(path, flag, overwrite, foreign, what)


def check_output_file(path: str, overwrite: bool, flag: str = '--prompt_npy') -> None:
  """Raises a UserError unless `path` may become the .npy file `flag` names: new, or
  (with `overwrite`) an existing .npy file."""
  name = f'{flag}={path!r}'
  if fs.isdir(path):
    raise UserError(
      f'{name} is a directory; {flag} names the .npy file to write, e.g. '
      f'{flag}={fs.join(path, "prompt.npy")}.'
    )
  if not fs.exists(path):
    fs.check_output_dir(path, flag)  # Its folder can be made (no file in the way) and written.
    return
  if not (path.endswith('.npy') and _starts_with(path, NPY_MAGIC)):
    raise UserError(
      f'{name} already exists and is not a .npy file; t5pt replaces only a .npy file, so it '
      f'leaves this one alone. Choose a new {flag}.'
    )
  if not overwrite:
    raise UserError(
      f'{name} already exists; choose a new {flag}, or pass --overwrite to replace it.'
    )
  folder = os.path.dirname(fs.absolute(path))
  if not fs.is_remote(path) and not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f'{name} cannot be replaced: {folder} is read-only; choose another {flag}.')


def _starts_with(path: str, magic: bytes) -> bool:
  with fs.path(path).open('rb') as f:
    return f.read(len(magic)) == magic


def check_outputs(outputs: Mapping[str, str], inputs: Mapping[str, str], overwrite: bool) -> None:
  """Every output ({flag: path}, of --prompt_npy, --hf_dir, --peft_dir) checked before
  anything is written: no two overlap, none is or holds an input ({flag: path}) the export
  reads, and each can be written (check_output_file, check_output_dir)."""
  named = list(outputs.items())
  for i, (flag, path) in enumerate(named):
    for other, other_path in named[i + 1 :]:
      if _within(path, other_path) or _within(other_path, path):
        raise UserError(
          f'{flag}={path!r} and {other}={other_path!r} overlap; give each output its own path.'
        )
    for source, source_path in inputs.items():
      if source_path and _within(source_path, path):
        raise UserError(
          f'{flag}={path!r} would replace {source}={source_path!r}, which the export reads; '
          f'choose a {flag} outside it.'
        )
  for flag, path in outputs.items():
    if flag in OUTPUT_DIRS:
      check_output_dir(path, flag, overwrite)
    else:
      check_output_file(path, overwrite, flag)


def _within(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies inside it."""
  path, folder = (fs.absolute(p).rstrip('/') for p in (path, folder))
  if not fs.is_remote(path):
    path, folder = os.path.normpath(path), os.path.normpath(folder)
  return path == folder or path.startswith(folder + '/')


@contextlib.contextmanager
def atomic_output_dir(path: str, flag: str, overwrite: bool) -> Iterator[str]:
  """Yields a folder to write into that becomes `path` only if the block completes; the
  block writes the marker of `flag` ('--hf_dir' or '--peft_dir') last (see
  fs.atomic_directory). An existing `path` is replaced only if `overwrite` and t5pt.export
  wrote it (check_output_dir); anything else is refused."""
  check_output_dir(path, flag, overwrite)
  if fs.is_remote(path):
    # Written in place there, so stale files (or the old marker) must not stay; locally
    # the old folder stays until the new one replaces it.
    fs.remove(path)
  check = lambda p: check_output_dir(p, flag, overwrite)
  with fs.atomic_directory(path, OUTPUT_DIRS[flag][0], check) as scratch:
    yield scratch


def export_prompt(prompt: np.ndarray, path: str, overwrite: bool = False) -> None:
  """Saves the prompt [P, d_model] as float32 .npy, atomically."""
  check_output_file(path, overwrite)
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(prompt, np.float32))
  fs.write_bytes(path, buffer.getvalue())


def _hf_sizes(
  base: base_readers.BaseCheckpoint,
  config: network.T5Config,
  trained: Mapping[str, np.ndarray],
) -> dict[str, int]:
  """{HF key: bytes} of what _hf_tensors yields, in its order, from shapes alone."""
  shapes = base.shapes()
  return {
    key: 4 * int(np.prod(trained[path].shape if path in trained else shapes[path], dtype=np.int64))
    for path, key in hf_format.parameter_names(config).items()
  }


def _hf_tensors(
  base: base_readers.BaseCheckpoint,
  config: network.T5Config,
  trained: Mapping[str, np.ndarray],
) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, float32 array in torch layout), one at a time: trained values preferred,
  adapters merged into their kernels."""
  for path, key in hf_format.parameter_names(config).items():
    value = trained[path] if path in trained else base.read(path)
    value = np.asarray(
      _merge_adapters(path, np.asarray(value, np.float32), trained, config), np.float32
    )
    yield key, value.T if hf_format.needs_transpose(path) else value


def _merge_adapters(
  path: str, value: np.ndarray, trained: Mapping[str, np.ndarray], config: network.T5Config
) -> np.ndarray:
  """`value` of the parameter at `path` with the run's mergeable methods folded in."""
  if not path.endswith('/kernel'):
    return value
  module = path[: -len('kernel')]
  leaves = {
    k: v for k, v in trained.items() if k.startswith(module) and '/' not in k[len(module) :]
  }
  if not leaves:
    return value
  return methods.merge({path: value, **leaves}, config)[path]


def export_hf(
  run: trained_model.TrainedRun,
  out_dir: str,
  base_path: str,
  max_shard_bytes: int,
  overwrite: bool = False,
) -> list[str]:
  """Writes the base with the run's trained base parameters and adapters merged in as an
  HF folder."""
  base = opening.open_base(base_path)
  config = base.reconcile(run.network_config()).require_complete()
  names = hf_format.parameter_names(config)
  unmergeable = sorted(
    k
    for k in run.params
    if k not in names
    and k != network.PROMPT_PATH
    and getattr(methods.owner(k), 'hf_export', None) != 'merge'
  )
  if unmergeable:
    raise UserError(
      f'{run.model_dir} trained {unmergeable}, which a transformers T5 has no place for.'
    )
  with atomic_output_dir(out_dir, '--hf_dir', overwrite) as scratch:
    files = safetensors_io.write_sharded(
      scratch,
      _hf_sizes(base, config, run.params),
      _hf_tensors(base, config, run.params),
      max_shard_bytes,
    )
    fs.write_json(fs.join(scratch, 'config.json'), hf_format.hf_config(config))
    fs.write_json(
      fs.join(scratch, 'generation_config.json'),
      {'decoder_start_token_id': 0, 'eos_token_id': 1, 'pad_token_id': 0},
    )
    if isinstance(base, base_readers.HFCheckpoint):
      for name in TOKENIZER_FILES:
        if fs.exists(fs.join(base_path, name)):
          fs.write_bytes(fs.join(scratch, name), fs.read_bytes(fs.join(base_path, name)))
    if run.prompt is not None:
      export_prompt(run.prompt, fs.join(scratch, 'prompt.npy'))
    fs.write_json(
      fs.join(scratch, HF_MARKER),
      {
        'model_dir': fs.absolute(run.model_dir),
        'step': run.step,
        'base': base_path,
        'merged': sorted(k for k in run.params if k in names or methods.is_added(k)),
        'prompt_length': 0 if run.prompt is None else int(run.prompt.shape[0]),
      },
    )
  return files


def peft_type(run: trained_model.TrainedRun) -> str:
  """'LORA' or 'PROMPT_TUNING': the PEFT adapter that holds what `run` trained.

  Raises a UserError, before anything is written, for runs no PEFT adapter reproduces.
  """
  types = methods.peft_types(run.model_dir, run.params)
  if 'LORA' not in types:
    if 'PROMPT_TUNING' not in types:
      raise UserError(
        f'{run.model_dir} trained neither a soft prompt '
        f'({network.PROMPT_PATH}) nor LoRA, so there is no adapter to export; '
        'use --hf_dir.'
      )
    return 'PROMPT_TUNING'
  base_trained = sorted(k for k in run.params if not methods.is_added(k))
  if base_trained:
    raise UserError(
      f'{run.model_dir} trained base parameters {base_trained[:3]} next to '
      'LoRA; a PEFT LoRA adapter applies to an unchanged base, so it cannot '
      'hold them. Use --hf_dir, which merges everything.'
    )
  return 'LORA'


def _trained_kernels(params: Mapping[str, np.ndarray], leaf: str) -> list[str]:
  """Sorted kernel paths that have the adapter leaf `leaf` (e.g. lora_a) in `params`."""
  suffix = '/' + leaf
  return sorted(k[: -len(leaf)] + 'kernel' for k in params if k.endswith(suffix))


def export_peft_lora(
  run: trained_model.TrainedRun, out_dir: str, base_name: str, overwrite: bool = False
) -> None:
  """Writes the run's LoRA as a PEFT LORA adapter for the base `base_name`, plus
  prompt.npy when the run also trained a soft prompt.

  t5pt's lora_a [in, r] and lora_b [r, out] become torch's lora_A.weight [r, in] and
  lora_B.weight [out, r]; each module keeps its rule's rank and alpha, so PEFT's scale
  alpha / r is t5pt's.
  """
  if peft_type(run) != 'LORA':
    raise UserError(f'{run.model_dir} trained no LoRA (lora_a / lora_b leaves).')
  config = run.network_config().require_complete()
  modules = hf_format.kernel_modules(config)
  tensors, rules = {}, {}
  for kernel in _trained_kernels(run.params, lora.LORA_A):
    prefix, name = kernel[: -len('kernel')], modules[kernel]
    rule = lora.rule_for(config, kernel)
    for leaf, peft_leaf in ((lora.LORA_A, 'lora_A'), (lora.LORA_B, 'lora_B')):
      tensors[f'base_model.model.{name}.{peft_leaf}.weight'] = np.ascontiguousarray(
        np.asarray(run.params[prefix + leaf], np.float32).T
      )
    rules[name] = (rule.rank, _json_number(rule.alpha))
  with atomic_output_dir(out_dir, '--peft_dir', overwrite) as scratch:
    safetensors_io.write_file(fs.join(scratch, 'adapter_model.safetensors'), tensors)
    if run.prompt is not None:
      export_prompt(run.prompt, fs.join(scratch, 'prompt.npy'))
    fs.write_json(
      fs.join(scratch, PEFT_MARKER), _lora_adapter_config(rules, config.lora_dropout, base_name)
    )


def _lora_adapter_config(
  rules: Mapping[str, tuple[int, float]], dropout: float, base_name: str
) -> dict:
  """A PEFT LoraConfig for {HF module name: (rank, alpha)}: the most common pair as r and
  lora_alpha, the other modules in rank_pattern / alpha_pattern under their full names
  (PEFT matches a pattern key against the end of a module name)."""
  (rank, alpha), _ = collections.Counter(rules.values()).most_common(1)[0]
  return {
    'peft_type': 'LORA',
    'task_type': 'SEQ_2_SEQ_LM',
    'r': rank,
    'lora_alpha': alpha,
    'target_modules': sorted(rules),
    'rank_pattern': {m: r for m, (r, _) in sorted(rules.items()) if r != rank},
    'alpha_pattern': {m: a for m, (_, a) in sorted(rules.items()) if a != alpha},
    'lora_dropout': dropout,
    'bias': 'none',
    'fan_in_fan_out': False,
    'use_rslora': False,
    'use_dora': False,
    'init_lora_weights': True,
    'base_model_name_or_path': base_name,
    'inference_mode': True,
  }


def _json_number(value: float) -> float | int:
  """16.0 -> 16 (as PEFT writes alphas); other values unchanged."""
  return int(value) if float(value).is_integer() else value


def export_peft_prompt(
  run: trained_model.TrainedRun, out_dir: str, base_name: str, overwrite: bool = False
) -> None:
  """Writes the prompt as a PEFT PROMPT_TUNING adapter that prepends it to the encoder
  only (num_transformer_submodules=1), exactly as t5pt does."""
  if run.prompt is None:
    raise UserError(f'{run.model_dir} trained no soft prompt ({network.PROMPT_PATH}).')
  config = run.network_config()
  length, dim = run.prompt.shape
  with atomic_output_dir(out_dir, '--peft_dir', overwrite) as scratch:
    safetensors_io.write_file(
      fs.join(scratch, 'adapter_model.safetensors'),
      {'prompt_embeddings': np.asarray(run.prompt, np.float32)},
    )
    fs.write_json(
      fs.join(scratch, PEFT_MARKER), _prompt_adapter_config(length, dim, config, base_name)
    )


def _prompt_adapter_config(length: int, dim: int, config: network.T5Config, base_name: str):
  return {
    'peft_type': 'PROMPT_TUNING',
    'task_type': 'SEQ_2_SEQ_LM',
    'num_virtual_tokens': int(length),
    'token_dim': int(dim),
    'num_transformer_submodules': 1,
    'num_attention_heads': config.num_heads,
    'num_layers': config.num_encoder_layers,
    'prompt_tuning_init': 'RANDOM',
    'base_model_name_or_path': base_name,
    'inference_mode': True,
  }


def parse_size(text: str) -> int:
  units = {'KB': 1 << 10, 'MB': 1 << 20, 'GB': 1 << 30, 'B': 1}
  for unit, factor in units.items():
    if text.upper().endswith(unit):
      try:
        return int(float(text[: -len(unit)]) * factor)
      except ValueError:
        break
  raise UserError(f'--max_shard_size={text!r}: expected a size such as 500MB or 2GB.')


def export_run(
  model_dir: Optional[str],
  step: Optional[int],
  prompt_npy: Optional[str],
  hf_dir: Optional[str],
  peft_dir: Optional[str],
  base: Optional[str],
  max_shard_size: str,
  overwrite: bool,
) -> None:
  """`python -m t5pt.export`: checks every output, then writes the ones asked for."""
  if not model_dir or not (prompt_npy or hf_dir or peft_dir):
    raise UserError('Pass --model_dir and at least one of --prompt_npy, --hf_dir, --peft_dir.')
  outputs = {
    flag: path
    for flag, path in (
      ('--prompt_npy', prompt_npy),
      ('--hf_dir', hf_dir),
      ('--peft_dir', peft_dir),
    )
    if path
  }
  check_outputs(outputs, {'--model_dir': model_dir, '--base': base}, overwrite)
  run = opening.open_run(model_dir, step, '--model_dir')
  if hf_dir or peft_dir:  # Both read the base: the one the run records, unless --base.
    base_setting = '--base' if base else "the run's INITIAL_CHECKPOINT_PATH"
    check_outputs(outputs, {base_setting: run.base_path(base)}, overwrite)
  adapter_type = peft_type(run) if peft_dir else None
  if prompt_npy:
    if run.prompt is None:
      raise UserError(f'{model_dir} trained no soft prompt ({network.PROMPT_PATH}).')
    export_prompt(run.prompt, prompt_npy, overwrite)
    print(f'prompt {run.prompt.shape} -> {prompt_npy}')
  if hf_dir:
    files = export_hf(run, hf_dir, run.base_path(base), parse_size(max_shard_size), overwrite)
    print(f'HF model ({len(files)} weight file(s)) -> {hf_dir}')
  if adapter_type == 'LORA':
    export_peft_lora(run, peft_dir, run.base_path(base), overwrite)
    print(f'PEFT LoRA adapter{" and prompt.npy" if run.prompt is not None else ""} -> {peft_dir}')
  elif adapter_type == 'PROMPT_TUNING':
    export_peft_prompt(run, peft_dir, hf_dir or run.base_path(base), overwrite)
    print(f'PEFT prompt-tuning adapter -> {peft_dir}')
