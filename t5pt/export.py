r"""Exports a trained run for use outside t5pt (t5pt/checkpoints/exporting.py says how).

python -m t5pt.export --model_dir=/runs/x --prompt_npy=/out/prompt.npy
python -m t5pt.export --model_dir=/runs/x --hf_dir=/out/flan-t5-base-mytask
python -m t5pt.export --model_dir=/runs/x --peft_dir=/out/mytask-prompt
"""

from absl import flags

from t5pt.checkpoints import exporting
from t5pt.runtime import gin_utils


def _define_flags() -> None:
  flags.DEFINE_string('model_dir', None, 'The t5pt run (MODEL_DIR) to export.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the newest).')
  flags.DEFINE_string('prompt_npy', None, 'Write the soft prompt to this .npy file.')
  flags.DEFINE_string('hf_dir', None, 'Write a transformers T5 folder here.')
  flags.DEFINE_string('peft_dir', None, 'Write an HF PEFT adapter (LoRA or prompt tuning) here.')
  flags.DEFINE_string('base', None, "Base checkpoint (default: the run's INITIAL_CHECKPOINT_PATH).")
  flags.DEFINE_string('max_shard_size', '2GB', 'Largest safetensors shard for --hf_dir.')
  flags.DEFINE_bool(
    'overwrite', False, 'Replace existing outputs t5pt wrote (never a folder with other files).'
  )


def _export() -> None:
  f = flags.FLAGS
  # E.g. the LoRA rules of a run real t5x trained (--gin.network.T5Config.lora_rules=...).
  gin_utils.parse_bindings(f.gin_bindings)
  exporting.export_run(
    f.model_dir, f.step, f.prompt_npy, f.hf_dir, f.peft_dir, f.base, f.max_shard_size, f.overwrite
  )


def main(argv) -> None:
  del argv
  gin_utils.run(_export, parse_gin_flags=False)


if __name__ == '__main__':
  _define_flags()
  gin_utils.app_run(main)
