"""SentencePiece vocabularies for real T5 checkpoints, and the vocabulary/embedding check.

T5 and Flan-T5 share one SentencePiece model (32,000 pieces) plus seqio's 100 sentinel
ids: 32,100 usable ids in an embedding table padded to 32,128 rows. HF folders ship it as
`spiece.model`; for T5X checkpoints it lives at
gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model.
"""

from typing import Optional

import seqio

import gin
from t5pt.runtime import fs
from t5pt.runtime.errors import UserError

T5_EXTRA_IDS = 100
SPM_FILES = ('spiece.model', 'sentencepiece.model')


@gin.configurable(module='vocabularies')
def sentencepiece(
  path: str = gin.REQUIRED,
  extra_ids: int = T5_EXTRA_IDS,
  setting: str = 'vocabularies.sentencepiece.path',
) -> seqio.SentencePieceVocabulary:
  """A seqio vocabulary from a SentencePiece model file, or from a folder holding one
  (an HF checkpoint's spiece.model), so gin can say
  `vocabularies.sentencepiece.path = %INITIAL_CHECKPOINT_PATH`. Fails now, not at first
  use, if unreadable. The file is read by seqio itself (through tf.io.gfile, so local or
  gs://); t5pt.runtime.fs only checks that it is there. `setting` names `path` in errors."""
  if fs.isdir(path):
    found = [fs.join(path, f) for f in SPM_FILES if fs.exists(fs.join(path, f))]
    if not found:
      raise UserError(
        f'{setting}={path!r} holds no SentencePiece model ({" or ".join(SPM_FILES)}). '
        'Pass the .model file itself.'
      )
    path = found[0]
  if not fs.exists(path):
    raise UserError(f'{setting}={path!r} does not exist; point it at a SentencePiece .model file.')
  vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  try:
    _ = vocabulary.vocab_size
  except Exception as e:  # sentencepiece raises RuntimeError/OSError variants.
    raise UserError(
      f'{setting}={path!r} is not a SentencePiece model ({str(e).strip()[:200]}); point it at '
      'the .model file the model was trained with (spiece.model in an HF folder).'
    ) from e
  return vocabulary


def check_fits(
  vocabulary: seqio.Vocabulary, embedding_rows: int, where: str, checkpoint: Optional[str] = None
) -> None:
  """Every token id the vocabulary can produce must have an embedding row."""
  if vocabulary.vocab_size > embedding_rows:
    source = f' of {checkpoint}' if checkpoint else ''
    raise UserError(
      f'The vocabulary of {where} has {vocabulary.vocab_size} ids but the '
      f'model{source} has {embedding_rows} embedding rows (vocab_size). Use '
      'the vocabulary the model was trained with (for T5/Flan-T5: the T5 '
      'SentencePiece model with 100 extra ids).'
    )
