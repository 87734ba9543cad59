r"""Train a T5 prompt (or any TRAINABLE subset), t5x-style.

  python -m t5pt.train --gin_file=gin/t5_1_1_tiny_prompt.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=200
"""

from t5pt.runtime import gin_utils
from t5pt.training import trainer


def main(argv):
  del argv
  gin_utils.run(trainer.train)


def console_main():
  gin_utils.app_run(main)


if __name__ == '__main__':
  console_main()
