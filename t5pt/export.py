r"""Exports a trained run for use outside t5pt.

    python -m t5pt.export --model_dir=/runs/x --prompt_npy=/out/prompt.npy
    python -m t5pt.export --model_dir=/runs/x --hf_dir=/out/flan-t5-base-mytask
    python -m t5pt.export --model_dir=/runs/x --peft_dir=/out/mytask-prompt

  --prompt_npy  the soft prompt, float32 [PROMPT_LENGTH, d_model] (the format the
                prompt-tuning library and PROMPT_INIT=@prompts.from_file read).
  --hf_dir      a transformers T5 folder: the base model with every trained base parameter
                merged in (config.json, safetensors shards, tokenizer files copied from an
                HF base), plus prompt.npy when the run trained a prompt. HF T5 has no
                soft prompt, so feed it as `inputs_embeds` (see README) or use --peft_dir.
  --peft_dir    an HF PEFT prompt-tuning adapter (adapter_config.json +
                adapter_model.safetensors) that peft.PeftModel.from_pretrained loads onto
                the base T5 (or onto --hf_dir).

The base is the run's INITIAL_CHECKPOINT_PATH (recorded in each checkpoint) unless --base
is given; it is read one tensor at a time, so exporting an 11B model needs host memory for
one shard (--max_shard_size), not the model. Outputs appear atomically: a folder is built
next to its destination and renamed into place once complete.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Mapping

import numpy as np
from absl import flags
from safetensors.numpy import save_file

from t5pt import checkpoint_import
from t5pt import gin_utils
from t5pt import hf_format
from t5pt import network
from t5pt import safetensors_io
from t5pt import trained_model
from t5pt.errors import UserError

TOKENIZER_FILES = ('spiece.model', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json')

flags.DEFINE_string('model_dir', None, 'The t5pt run (MODEL_DIR) to export.')
flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the newest).')
flags.DEFINE_string('prompt_npy', None, 'Write the soft prompt to this .npy file.')
flags.DEFINE_string('hf_dir', None, 'Write a transformers T5 folder here.')
flags.DEFINE_string('peft_dir', None, 'Write an HF PEFT prompt-tuning adapter here.')
flags.DEFINE_string('base', None, "Base checkpoint (default: the run's "
                    'INITIAL_CHECKPOINT_PATH).')
flags.DEFINE_string('max_shard_size', '2GB', 'Largest safetensors shard for --hf_dir.')
flags.DEFINE_bool('overwrite', False, 'Replace existing outputs.')


@contextlib.contextmanager
def atomic_output_dir(path: str, overwrite: bool) -> Iterator[str]:
  """Yields a scratch folder that becomes `path` only if the block completes."""
  if os.path.exists(path) and not overwrite:
    raise UserError(f'{path} already exists; choose a new output path or pass --overwrite.')
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.partial-', dir=parent)
  try:
    yield scratch
  except BaseException:
    shutil.rmtree(scratch, ignore_errors=True)
    raise
  if os.path.exists(path):
    shutil.rmtree(path)
  os.rename(scratch, path)


def export_prompt(prompt: np.ndarray, path: str, overwrite: bool = False) -> None:
  """Saves the prompt [P, d_model] as float32 .npy, atomically."""
  if os.path.exists(path) and not overwrite:
    raise UserError(f'{path} already exists; choose a new output path or pass --overwrite.')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.partial'
  with open(tmp, 'wb') as f:
    np.save(f, np.asarray(prompt, np.float32))
  os.replace(tmp, path)


def _hf_tensors(base: checkpoint_import.BaseCheckpoint, config: network.T5Config,
                trained: Mapping[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, float32 array in torch layout), one at a time, trained values preferred."""
  for path, key in hf_format.parameter_names(config).items():
    value = trained[path] if path in trained else base.read(path)
    value = np.asarray(value, np.float32)
    yield key, value.T if hf_format.needs_transpose(path) else value


def export_hf(run: trained_model.TrainedRun, out_dir: str, base_path: str,
              max_shard_bytes: int, overwrite: bool = False) -> list[str]:
  """Writes the base with the run's trained base parameters merged in as an HF folder."""
  base = checkpoint_import.open_checkpoint(base_path)
  config = base.reconcile(run.network_config()).require_complete()
  names = hf_format.parameter_names(config)
  unmergeable = sorted(k for k in run.params if k not in names and k != network.PROMPT_PATH)
  if unmergeable:
    raise UserError(f'{run.model_dir} trained {unmergeable}, which a transformers T5 has no '
                    'place for.')
  with atomic_output_dir(out_dir, overwrite) as scratch:
    files = safetensors_io.write_sharded(scratch, _hf_tensors(base, config, run.params),
                                         max_shard_bytes)
    _write_json(os.path.join(scratch, 'config.json'), hf_format.hf_config(config))
    _write_json(os.path.join(scratch, 'generation_config.json'),
                {'decoder_start_token_id': 0, 'eos_token_id': 1, 'pad_token_id': 0})
    if isinstance(base, checkpoint_import.HFCheckpoint):
      for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(base_path, name)):
          shutil.copy(os.path.join(base_path, name), scratch)
    if run.prompt is not None:
      export_prompt(run.prompt, os.path.join(scratch, 'prompt.npy'))
    _write_json(os.path.join(scratch, 't5pt_export.json'), {
        'model_dir': os.path.abspath(run.model_dir), 'step': run.step, 'base': base_path,
        'merged': sorted(k for k in run.params if k in names),
        'prompt_length': 0 if run.prompt is None else int(run.prompt.shape[0])})
  return files


def export_peft_prompt(run: trained_model.TrainedRun, out_dir: str, base_name: str,
                       overwrite: bool = False) -> None:
  """Writes the prompt as a PEFT PROMPT_TUNING adapter that prepends it to the encoder
  only (num_transformer_submodules=1), exactly as t5pt does."""
  if run.prompt is None:
    raise UserError(f'{run.model_dir} trained no soft prompt ({network.PROMPT_PATH}).')
  config = run.network_config()
  length, dim = run.prompt.shape
  with atomic_output_dir(out_dir, overwrite) as scratch:
    save_file({'prompt_embeddings': np.asarray(run.prompt, np.float32)},
              os.path.join(scratch, 'adapter_model.safetensors'), metadata={'format': 'pt'})
    _write_json(os.path.join(scratch, 'adapter_config.json'), {
        'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM',
        'num_virtual_tokens': int(length), 'token_dim': int(dim),
        'num_transformer_submodules': 1, 'num_attention_heads': config.num_heads,
        'num_layers': config.num_encoder_layers, 'prompt_tuning_init': 'RANDOM',
        'base_model_name_or_path': base_name, 'inference_mode': True})


def parse_size(text: str) -> int:
  units = {'KB': 1 << 10, 'MB': 1 << 20, 'GB': 1 << 30, 'B': 1}
  for unit, factor in units.items():
    if text.upper().endswith(unit):
      try:
        return int(float(text[:-len(unit)]) * factor)
      except ValueError:
        break
  raise UserError(f'--max_shard_size={text!r}: expected a size such as 500MB or 2GB.')


def _write_json(path: str, value) -> None:
  with open(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)


def _export_from_flags() -> None:
  f = flags.FLAGS
  if not f.model_dir or not (f.prompt_npy or f.hf_dir or f.peft_dir):
    raise UserError('Pass --model_dir and at least one of --prompt_npy, --hf_dir, '
                    '--peft_dir.')
  run = trained_model.TrainedRun(f.model_dir, f.step)
  if f.prompt_npy:
    if run.prompt is None:
      raise UserError(f'{f.model_dir} trained no soft prompt ({network.PROMPT_PATH}).')
    export_prompt(run.prompt, f.prompt_npy, f.overwrite)
    print(f'prompt {run.prompt.shape} -> {f.prompt_npy}')
  if f.hf_dir:
    files = export_hf(run, f.hf_dir, run.base_path(f.base), parse_size(f.max_shard_size),
                      f.overwrite)
    print(f'HF model ({len(files)} weight file(s)) -> {f.hf_dir}')
  if f.peft_dir:
    export_peft_prompt(run, f.peft_dir, f.hf_dir or run.base_path(f.base), f.overwrite)
    print(f'PEFT prompt-tuning adapter -> {f.peft_dir}')


def main(argv) -> None:
  del argv
  gin_utils.run(_export_from_flags, parse_gin_flags=False)


if __name__ == '__main__':
  gin_utils.app_run(main)
