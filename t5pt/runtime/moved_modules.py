"""The modules' names before t5pt's packages existed, still importable.

Gin files import modules by name (`from t5pt import trainer`), and so does the
`config.gin` saved in every run written before the move (and in every t5x run that used
t5pt's network). Those names keep working: `import t5pt.trainer` gives the very module
object of `t5pt.training.trainer`, so gin sees one set of configurables either way.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Old name under t5pt -> where the module lives now.
MOVED = {
  'adapters': 't5pt.model.methods',
  'backend_check': 't5pt.runtime.backend_check',
  'batch_inference': 't5pt.serving.batch_inference',
  'checkpoint_import': 't5pt.checkpoints.base_readers',
  'checks': 't5pt.runtime.checks',
  'data': 't5pt.runtime.data',
  'data_report': 't5pt.training.data_report',
  'decoding': 't5pt.model.decoding',
  'distributed': 't5pt.runtime.distributed',
  'ensemble': 't5pt.serving.ensemble',
  'ensemble_evaluation': 't5pt.serving.ensemble_evaluation',
  'errors': 't5pt.runtime.errors',
  'evaluation': 't5pt.serving.evaluation',
  'fs': 't5pt.runtime.fs',
  'gin_utils': 't5pt.runtime.gin_utils',
  'hf_format': 't5pt.checkpoints.hf_format',
  'inference': 't5pt.serving.inference',
  'layers': 't5pt.model.layers',
  'logs': 't5pt.runtime.logs',
  'metrics_log': 't5pt.runtime.metrics_log',
  'models': 't5pt.model.models',
  'network': 't5pt.model.network',
  'optimizers': 't5pt.training.optimizers',
  'partitioning': 't5pt.runtime.partitioning',
  'prompt_bank': 't5pt.serving.prompt_bank',
  'prompts': 't5pt.model.prompts',
  'quantization': 't5pt.model.quantization',
  'run_setup': 't5pt.training.run_setup',
  'safetensors_io': 't5pt.checkpoints.safetensors_io',
  'seqio_outputs': 't5pt.serving.seqio_outputs',
  'steps': 't5pt.model.steps',
  't5x_legacy': 't5pt.checkpoints.t5x_legacy',
  't5x_network': 't5pt.t5x_bridge.t5x_network',
  'trained_model': 't5pt.checkpoints.trained_model',
  'trainer': 't5pt.training.trainer',
  'vocabularies': 't5pt.runtime.vocabularies',
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds `t5pt.<old name>` and loads it as the module now at its new place."""

  def find_spec(self, fullname, path=None, target=None):
    package, _, name = fullname.rpartition('.')
    if package != 't5pt' or name not in MOVED:
      return None
    return importlib.util.spec_from_loader(fullname, self)

  def create_module(self, spec):
    return importlib.import_module(MOVED[spec.name.rpartition('.')[2]])

  def exec_module(self, module):
    del module  # Already executed under its own name.


def install() -> None:
  if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
    sys.meta_path.append(_Alias())
