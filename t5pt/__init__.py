"""t5pt: parameter-efficient tuning (soft prompts first) of frozen T5 / Flan-T5 in JAX.

The top of the package holds only the commands (`python -m t5pt.<command>`): train, infer,
eval, export, peft_import, plan, demo. Everything else lives in the packages below them,
each of which imports only the ones listed after it (docs/ARCHITECTURE.md):

  training/     the loop, its setup and resume, optimizers, the memory planner
  serving/      decoding a run into predictions, many prompts on one base, evaluation
  t5x_bridge/   the network and t5pt's macros as real t5x's runner sees them
  checkpoints/  opening what the user pointed at, run checkpoints, formats, exporters
  model/        the T5 network, its tuning methods, losses, decoding, jitted steps
  tools/        tools a model calls while it decodes, and the sandbox model-written code runs in
  runtime/      files (local and gs://), errors, checks, logs, gin, devices and hosts, data
"""

from t5pt.runtime import logs as _logs
from t5pt.runtime import moved_modules as _moved_modules

__version__ = '0.1.0'

# Every entry point (python -m t5pt.train, ...) imports this package before its own
# imports load TensorFlow and JAX: the one place early enough to keep their logs quiet.
if _logs.started_as_program():
  _logs.quiet_cli()

_moved_modules.install()
