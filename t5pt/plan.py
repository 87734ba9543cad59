r"""Will a training run fit? Prints each device's bytes before any weight is loaded
(t5pt/training/planner.py says how).

  python -m t5pt.plan --gin_file=gin/flan_t5_xxl_prompt.gin --devices=2 --budget_gb=24
"""

from typing import Sequence

from absl import flags

from t5pt.runtime import checks
from t5pt.runtime import gin_utils
from t5pt.training import planner

flags.DEFINE_integer('devices', None, 'Devices to plan for (default: those of this machine).')
flags.DEFINE_string('mesh', None, "Data x model mesh, e.g. '4x2' (default: NUM_PARTITIONS).")
flags.DEFINE_float('budget_gb', None, 'Memory per device (GB, 10^9 bytes) to fit into.')


def main(argv: Sequence[str]) -> None:
  del argv
  devices, budget_gb = flags.FLAGS.devices, flags.FLAGS.budget_gb
  if devices is not None and devices >= 1:
    # Before gin_utils.run, whose multi-host start already asks JAX for its devices.
    planner.simulate_devices(devices)

  def plan():
    if devices is not None:
      checks.integer(devices, '--devices', 1)
    if budget_gb is not None:
      checks.positive_number(budget_gb, '--budget_gb')
    planner.main_plan(devices, flags.FLAGS.mesh, budget_gb)

  gin_utils.run(plan)


def console_main():
  gin_utils.app_run(main)


if __name__ == '__main__':
  console_main()
