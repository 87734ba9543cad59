r"""The embedded default run: pretrain a tiny T5, freeze it, prompt-tune a held-out task.

  python -m t5pt.demo [--run_dir=runs/demo]

Stage 1 trains every parameter of a tiny T5 1.1 network on a synthetic instruction
mixture ("max: cab" -> "c", "first: cab" -> "c", ...). Stage 2 freezes it and trains only
a soft prompt on a held-out task whose inputs carry no instruction at all, so the prompt
must learn to stand in for one. Both stages are ordinary `t5pt.train` runs of the gin
files in gin/demo/ and gin/t5_1_1_tiny_prompt.gin; the demo only chains them.
"""

import time

import jax.numpy as jnp
import numpy as np
from absl import flags

import gin
from t5pt.checkpoints import opening
from t5pt.model import models
from t5pt.runtime import fs
from t5pt.runtime import gin_utils
from t5pt.serving import infer_io
from t5pt.serving import inference
from t5pt.training import trainer

HELDOUT_TASK = 'synthetic_heldout_max'

_RUN_DIR = flags.DEFINE_string(
  'run_dir', None, 'Where both runs go (default: runs/demo-<timestamp>).'
)
_BASE_STEPS = flags.DEFINE_integer(
  'base_train_steps', None, 'Override TRAIN_STEPS of stage 1 (gin/demo/base_tiny.gin).'
)
_PROMPT_STEPS = flags.DEFINE_integer(
  'prompt_train_steps', None, 'Override TRAIN_STEPS of stage 2 (t5_1_1_tiny_prompt.gin).'
)


def _steps_binding(steps) -> list[str]:
  return [] if steps is None else [f'TRAIN_STEPS = {steps}']


def _run_stage(gin_file: str, bindings: list[str]) -> dict:
  gin.clear_config()
  gin_utils.parse([gin_file], bindings)
  return trainer.train()


def _accuracy_line(name: str, metrics: dict, decoded: dict) -> str:
  return (
    f'  {name:<28} decoded exact match {decoded["sequence_accuracy"]:5.1f}%   '
    f'token accuracy {metrics["token_accuracy"]:5.1f}%   '
    f'loss {metrics["loss"]:.3f}'
  )


def _show_predictions(prompt_dir: str, count: int) -> None:
  """Greedy-decodes the first held-out validation examples with the trained prompt."""
  loaded = opening.load(prompt_dir)
  lengths = loaded.run.meta.task_feature_lengths
  input_length = lengths['inputs'] - loaded.config.prompt_length
  source = infer_io.task_source(HELDOUT_TASK, 'validation', input_length)
  examples = source.examples[:count]
  tokens = np.zeros((count, input_length), np.int32)
  for i, ex in enumerate(examples):
    tokens[i, : len(ex['tokens'])] = ex['tokens']
  decoded, _ = inference.predict_batch(
    models.EncoderDecoderModel(loaded.config),
    loaded.params,
    jnp.asarray(tokens),
    lengths['targets'],
  )
  print(f'\nGreedy decodes of the first {count} held-out examples (base + prompt):')
  for ex, row in zip(examples, np.asarray(decoded)[:, 0]):
    prediction = source.vocabulary.decode([int(t) for t in row])
    mark = 'ok' if prediction == ex['targets'] else 'wrong'
    print(f'  {ex["inputs"]!r:>12} -> {prediction!r:<6} target {ex["targets"]!r:<6} {mark}')


def demo() -> None:
  run_dir = fs.absolute(_RUN_DIR.value or fs.join('runs', time.strftime('demo-%Y%m%d-%H%M%S')))
  base_dir, prompt_dir = fs.join(run_dir, 'base'), fs.join(run_dir, 'prompt')
  print(
    f'[1/2] Training the tiny base model on the synthetic instruction mixture -> {base_dir}',
    flush=True,
  )
  base = _run_stage(
    'gin/demo/base_tiny.gin', [f'MODEL_DIR = {base_dir!r}', *_steps_binding(_BASE_STEPS.value)]
  )
  print(f'[2/2] Freezing it and prompt-tuning the held-out task -> {prompt_dir}', flush=True)
  tuned = _run_stage(
    'gin/t5_1_1_tiny_prompt.gin',
    [
      f'MODEL_DIR = {prompt_dir!r}',
      f'INITIAL_CHECKPOINT_PATH = {base_dir!r}',
      *_steps_binding(_PROMPT_STEPS.value),
    ],
  )
  print(
    f'\nHeld-out task "{HELDOUT_TASK}" (validation split; exact match of greedy '
    'decodes, token accuracy and loss teacher-forced):'
  )
  print(
    _accuracy_line(
      'base, before prompt tuning',
      tuned['eval_at_start'],
      tuned['infer_eval_at_start'][HELDOUT_TASK],
    )
  )
  print(_accuracy_line('base + trained prompt', tuned['eval'], tuned['infer_eval'][HELDOUT_TASK]))
  _show_predictions(prompt_dir, count=6)
  print(
    f'\nTrained {tuned["trainable_parameters"]} prompt parameters; the frozen base '
    f'was trained on the instruction mixture (eval: '
    f'{base["eval"]["sequence_accuracy"]:.1f}% sequence accuracy).'
  )
  print(f'Run directory: {run_dir}  (tensorboard --logdir {run_dir})')


def main(argv):
  del argv
  gin_utils.run(demo, parse_gin_flags=False)


def console_main():
  gin_utils.app_run(main)


if __name__ == '__main__':
  console_main()
