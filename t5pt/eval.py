r"""Evaluate a trained prompt (or any checkpoint) with the task's metrics, t5x-style.

  python -m t5pt.eval --gin.CHECKPOINT_PATH="'/runs/x'" --gin.EVAL_OUTPUT_DIR="'/out'"

Uses gin/eval.gin unless --gin_file is given; unset macros come from the run.
"""

from t5pt.runtime import gin_utils
from t5pt.serving import evaluation


def main(argv):
  del argv
  gin_utils.run(evaluation.evaluate, default_gin_files=['eval.gin'])


if __name__ == '__main__':
  gin_utils.app_run(main)
