r"""Imports an HF PEFT LoRA adapter of a T5 as a t5pt run (t5pt/checkpoints/peft_importing.py).

    python -m t5pt.peft_import --peft_dir=/adapters/mytask \
        --base=checkpoints/flan-t5-base --model_dir=/runs/mytask-lora
"""

from absl import flags

from t5pt.checkpoints import peft_importing
from t5pt.checkpoints import run_checkpoints
from t5pt.runtime import gin_utils
from t5pt.runtime.errors import UserError


def _define_flags() -> None:
  flags.DEFINE_string('peft_dir', None, 'The PEFT LoRA adapter folder to import.')
  flags.DEFINE_string('base', None, 'The base T5 checkpoint the adapter was trained on.')
  flags.DEFINE_string('model_dir', None, 'The t5pt run (MODEL_DIR) to create.')
  flags.DEFINE_bool(
    'overwrite', False, 'Replace an existing --model_dir (only a run t5pt.peft_import wrote).'
  )


def _import() -> None:
  f = flags.FLAGS
  if not (f.peft_dir and f.base and f.model_dir):
    raise UserError(
      'Pass --peft_dir (the PEFT LoRA adapter), --base (the T5 it was '
      'trained on) and --model_dir (the t5pt run to create).'
    )
  config = peft_importing.import_adapter(f.peft_dir, f.base, f.model_dir, f.overwrite)
  print(
    f'LoRA on {len(config.lora_rules)} kernel(s) -> {f.model_dir} '
    f'({run_checkpoints.STEP_PREFIX}_{peft_importing.IMPORT_STEP})'
  )


def main(argv) -> None:
  del argv
  gin_utils.run(_import, parse_gin_flags=False)


if __name__ == '__main__':
  _define_flags()
  gin_utils.app_run(main)
