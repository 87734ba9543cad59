r"""Batch inference into JSONL, t5x-style.

  ./infer.sh --gin.CHECKPOINT_PATH="'/runs/x'" --gin.INFER_OUTPUT_DIR="'/out'"
  ./infer.sh --gin.CHECKPOINT_PATH="'/runs/x'" --gin.INFER_OUTPUT_DIR="'/out'" \
      --gin.INPUT_FILE="'questions.jsonl'"

Uses gin/infer.gin unless --gin_file is given; see t5pt/serving/batch_inference.py.
"""

from t5pt.runtime import gin_utils
from t5pt.serving import batch_inference


def main(argv):
  del argv
  gin_utils.run(batch_inference.infer, default_gin_files=['infer.gin'])


if __name__ == '__main__':
  gin_utils.app_run(main)
