"""One warning line when JAX runs on the CPU of a machine with an NVIDIA GPU or a TPU.

requirements.txt pins the CPU build of jax/jaxlib; launch.sh adds JAX's CUDA 12 or TPU build
where it finds the hardware. A run installed some other way (or whose plugin failed to start)
would silently train on the CPU: `warn_if_accelerator_unused` says so, with the fix. JAX's own
warning about it is a library log, which t5pt keeps off the terminal (t5pt/runtime/logs.py).

The hardware tests mirror launch.sh's `has_nvidia_gpu` and `has_tpu` (keep the two in step;
tests/test_launch.py checks that both give the same answer):
  NVIDIA GPU   /dev/nvidia0 exists, or `nvidia-smi -L` lists a line starting "GPU ".
  TPU          TPU_ACCELERATOR_TYPE or TPU_WORKER_HOSTNAMES is set (GKE), a /dev/accelN
               device exists, or a Google TPU is on the PCI bus (JAX's own test,
               jax/_src/hardware_utils.py).
/dev and /sys are read under $T5PT_SYSROOT (tests point it at a fake tree).
"""

import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys

ACCELERATORS = ('cpu', 'cuda12', 'tpu')  # T5PT_ACCELERATOR's values (launch.sh)
GOOGLE_PCI_VENDOR_ID = '0x1ae0'
TPU_PCI_DEVICE_IDS = frozenset(
  ['0x0027', '0x0056', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076']
)
TPU_ENVIRONMENT = ('TPU_ACCELERATOR_TYPE', 'TPU_WORKER_HOSTNAMES')
# The distribution whose presence means JAX's build for the accelerator is installed.
PLUGINS = {'cuda12': 'jax-cuda12-plugin', 'tpu': 'libtpu'}
DEVICE_NAMES = {'cuda12': 'an NVIDIA GPU', 'tpu': 'a TPU'}


def _sysroot() -> str:
  return os.environ.get('T5PT_SYSROOT', '')


def _read(path: str) -> str:
  try:
    with open(path, encoding='ascii', errors='replace') as f:
      return f.read().strip()
  except OSError:
    return ''


def has_nvidia_gpu() -> bool:
  if os.path.exists(_sysroot() + '/dev/nvidia0'):
    return True
  if shutil.which('nvidia-smi') is None:
    return False
  try:
    listed = subprocess.run(
      ['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20, check=False
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return False
  return any(line.startswith('GPU ') for line in listed.splitlines())


def has_tpu() -> bool:
  if any(os.environ.get(name) for name in TPU_ENVIRONMENT):
    return True
  root = _sysroot()
  if glob.glob(root + '/dev/accel[0-9]*'):
    return True
  for vendor in glob.glob(root + '/sys/bus/pci/devices/*/vendor'):
    device = os.path.join(os.path.dirname(vendor), 'device')
    if _read(vendor) == GOOGLE_PCI_VENDOR_ID and _read(device) in TPU_PCI_DEVICE_IDS:
      return True
  return False


def detect_accelerator() -> str:
  """'cuda12', 'tpu' or 'cpu': what launch.sh installs here when T5PT_ACCELERATOR is unset."""
  if has_nvidia_gpu():
    return 'cuda12'
  if has_tpu():
    return 'tpu'
  return 'cpu'


def _installed(distribution: str) -> bool:
  try:
    importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def unused_accelerator_message() -> str | None:
  """Why and how to fix that JAX runs on the CPU here, or None when nothing is amiss: JAX
  uses an accelerator, the machine has none, or the CPU was asked for (T5PT_ACCELERATOR=cpu
  or JAX_PLATFORMS=cpu)."""
  if os.environ.get('T5PT_ACCELERATOR') == 'cpu':
    return None
  import jax  # pylint: disable=import-outside-toplevel

  platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS') or ''
  if platforms.replace(' ', '') == 'cpu' or jax.default_backend() != 'cpu':
    return None
  accelerator = detect_accelerator()
  if accelerator == 'cpu':
    return None
  device, plugin = DEVICE_NAMES[accelerator], PLUGINS[accelerator]
  if _installed(plugin):
    return (
      f'this machine has {device} but JAX runs on the CPU: {plugin} is installed but did not '
      f'start (T5PT_VERBOSE=1 shows JAX\'s reason; T5PT_ACCELERATOR=cpu runs on the CPU '
      'without this warning)'
    )
  return (
    f'this machine has {device} but JAX runs on the CPU (JAX\'s {accelerator} build is not '
    f'installed): run through `T5PT_ACCELERATOR={accelerator} ./launch.sh ...` or '
    f'`pip install "jax[{accelerator}]=={jax.__version__}"` (T5PT_ACCELERATOR=cpu runs on the '
    'CPU without this warning)'
  )


def warn_if_accelerator_unused() -> None:
  """Prints `unused_accelerator_message()` as one `t5pt: warning:` line on stderr. Cheap (it
  looks at the hardware only when JAX chose the CPU) and never raises. Call it after
  jax.distributed.initialize: it starts JAX's backends."""
  try:
    message = unused_accelerator_message()
  except Exception:  # pylint: disable=broad-exception-caught
    return  # A check that must never stop a run.
  if message:
    print(f't5pt: warning: {message}', file=sys.stderr, flush=True)
