"""t5pt: parameter-efficient tuning (soft prompts first) of frozen T5 / Flan-T5 in JAX."""

from t5pt import logs as _logs

__version__ = '0.1.0'

# Every entry point (python -m t5pt.train, ...) imports this package before its own
# imports load TensorFlow and JAX: the one place early enough to keep their logs quiet.
if _logs.started_as_program():
  _logs.quiet_cli()
