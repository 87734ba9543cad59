#!/usr/bin/env bash
# One entry point that sets up and runs t5pt on a fresh machine.
#
#   ./launch.sh                 create .venv if needed, then run the embedded demo
#   ./launch.sh test [ARGS]     create .venv if needed, then run the test suite (pytest ARGS)
#   ./launch.sh train ARGS      python -m t5pt.train ARGS  (likewise infer / eval / export /
#                               peft_import / demo)
#
# Several hosts (docs/training.md "Several hosts"): the same command on every host, plus
#   multi-host GPU   --multiprocess_gpu --coordinator_address=HOST0:1234 --process_count=N
#                    --process_index=I   (or --multiprocess_gpu alone under SLURM / MPI / GKE)
#   Cloud TPU pod    nothing (JAX distributed starts by itself): gcloud compute tpus tpu-vm
#                    ssh POD --worker=all --command "cd t5pt && ./launch.sh train ..."
#
# The virtual environment is (re)installed whenever a requirements file changes; tests
# use requirements-test.txt (the runtime + pytest + CPU torch/transformers/peft).
#
# JAX for the machine: requirements.txt pins the CPU build of jax/jaxlib. On top of it, runs
# install JAX's CUDA 12 plugin (`jax[cuda12]==` the jax pin) when `nvidia-smi -L` lists a
# GPU or /dev/nvidia0 exists, or libtpu (`jax[tpu]==` the pin) on a TPU VM (a /dev/accelN
# device, a Google TPU on the PCI bus as JAX looks for it, or TPU_ACCELERATOR_TYPE /
# TPU_WORKER_HOSTNAMES set, as on GKE); otherwise nothing. T5PT_ACCELERATOR=cpu|cuda12|tpu
# overrides the choice. $VENV/.accelerator records what is installed; another choice
# uninstalls that and installs the new one. `test` keeps the venv's build and runs on the
# CPU (JAX_PLATFORMS=cpu where an accelerator build is installed) unless T5PT_ACCELERATOR
# is set. t5pt/runtime/backend_check.py warns when a run sees an accelerator but got the CPU; it
# mirrors the detection below (keep the two in step). Tests read /dev and /sys under
# T5PT_SYSROOT.
#
# Commands run in the directory you start them from: relative paths in flags and gin
# bindings resolve there, and its Python modules (e.g. a my_tasks.py registering your
# tasks) are importable, after t5pt's own packages. Tests run from the repository.
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV="$(realpath -m "${T5PT_VENV:-$REPO/.venv}")"
SYSROOT="${T5PT_SYSROOT:-}"

command="${1:-demo}"
[[ $# -gt 0 ]] && shift
case "$command" in
  test|demo|train|infer|eval|export|peft_import) ;;
  *) echo "usage: ./launch.sh [demo|test|train|infer|eval|export|peft_import] [ARGS...]" >&2; exit 2 ;;
esac
case "${T5PT_ACCELERATOR:-}" in
  ''|cpu|cuda12|tpu) ;;
  *) echo "t5pt: T5PT_ACCELERATOR='$T5PT_ACCELERATOR' is not one of: cpu, cuda12, tpu" >&2; exit 2 ;;
esac

has_nvidia_gpu() {
  [[ -e "$SYSROOT/dev/nvidia0" ]] && return 0
  command -v nvidia-smi >/dev/null || return 1
  local listed
  listed="$(timeout 20 nvidia-smi -L 2>/dev/null)" || true
  grep -q '^GPU ' <<<"$listed"
}

# JAX's own test (jax/_src/hardware_utils.py): Google's PCI vendor id and a TPU device id.
TPU_PCI_DEVICE_IDS=" 0x0027 0x0056 0x005e 0x0062 0x0063 0x006f 0x0076 "
has_tpu() {
  [[ -n "${TPU_ACCELERATOR_TYPE:-}${TPU_WORKER_HOSTNAMES:-}" ]] && return 0
  compgen -G "$SYSROOT/dev/accel[0-9]*" >/dev/null && return 0
  local vendor
  for vendor in "$SYSROOT"/sys/bus/pci/devices/*/vendor; do
    [[ -f "$vendor" && "$(cat "$vendor")" == 0x1ae0 ]] || continue
    [[ "$TPU_PCI_DEVICE_IDS" == *" $(cat "${vendor%vendor}device" 2>/dev/null) "* ]] && return 0
  done
  return 1
}

# installed_accelerator: the JAX build $VENV has on top of requirements.txt (cpu: none).
installed_accelerator() {
  local stamp
  stamp="$(cat "$VENV/.accelerator" 2>/dev/null)" || true
  stamp="${stamp%% *}"
  echo "${stamp:-cpu}"
}

# accelerator_spec CHOICE: what pip installs for it, at requirements.txt's jax version.
accelerator_spec() {
  [[ "$1" == cpu ]] && return
  local version
  version="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' "$REPO/requirements.txt")"
  [[ -n "$version" ]] || { echo "t5pt: requirements.txt pins no jax==VERSION" >&2; exit 1; }
  echo "jax[$1]==$version"
}

# accelerator_packages CHOICE: what a switch away from it uninstalls.
accelerator_packages() {
  case "$1" in
    cuda12) echo jax-cuda12-plugin jax-cuda12-pjrt ;;
    tpu) echo libtpu ;;
  esac
}

# setup REQUIREMENTS_FILE: (re)installs it into $VENV unless its stamp is current.
setup() {
  local requirements="$1"
  local stamp="$VENV/.${requirements%.txt}.sha256"
  local want
  want="$(cat "$REPO"/requirements*.txt | sha256sum | cut -d' ' -f1)"
  # The test environment is a superset of the runtime one.
  [[ -f "$VENV/.requirements-test.sha256" && "$(cat "$VENV/.requirements-test.sha256")" == "$want" ]] && return
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "t5pt: creating $VENV with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "t5pt: installing $requirements into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    local torch_pin
    torch_pin="$(grep -E '^torch==' "$REPO/$requirements" || true)"
    if [[ -n "$torch_pin" ]]; then  # Alone first, so pip takes the CPU wheel (see file).
      "$VENV/bin/python" -m pip install --quiet "$torch_pin"
    fi
    "$VENV/bin/python" -m pip install --quiet -r "$REPO/$requirements"
    echo "$want" > "$stamp"
  fi
}

# setup_accelerator CHOICE REQUIREMENTS_FILE: puts JAX's build for CHOICE on top of it.
setup_accelerator() {
  local choice="$1" requirements="$2"
  local spec have want
  spec="$(accelerator_spec "$choice")"
  want="$choice${spec:+ $spec}"
  have="$(cat "$VENV/.accelerator" 2>/dev/null)" || true
  [[ "$have" == "$want" || ( -z "$have" && "$want" == cpu ) ]] && return
  local old
  old="$(accelerator_packages "${have%% *}")"
  if [[ -n "$old" ]]; then
    echo "t5pt: uninstalling JAX's ${have%% *} build ($old) from $VENV" >&2
    # shellcheck disable=SC2086  # a list of package names
    "$VENV/bin/python" -m pip uninstall --quiet --yes $old
  fi
  if [[ -n "$spec" ]]; then
    echo "t5pt: installing JAX for $choice ($spec) into $VENV (T5PT_ACCELERATOR overrides)" >&2
    "$VENV/bin/python" -m pip install --quiet -c "$REPO/$requirements" "$spec"
  fi
  echo "$want" > "$VENV/.accelerator"
}

if [[ "$command" == test ]]; then requirements=requirements-test.txt; else requirements=requirements.txt; fi
if [[ -n "${T5PT_ACCELERATOR:-}" ]]; then accelerator="$T5PT_ACCELERATOR"
elif [[ "$command" == test ]]; then accelerator="$(installed_accelerator)"
elif has_nvidia_gpu; then accelerator=cuda12
elif has_tpu; then accelerator=tpu
else accelerator=cpu; fi
setup "$requirements"
setup_accelerator "$accelerator" "$requirements"
case "$command" in
  test)
    cd "$REPO"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    if [[ -z "${T5PT_ACCELERATOR:-}" ]]; then
      # The suite runs on the CPU, and the runs it launches keep the venv's JAX build.
      export T5PT_ACCELERATOR="$accelerator"
      [[ "$accelerator" == cpu ]] || export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *)
    # -P: the working directory comes after t5pt on the import path, not before it.
    export PYTHONPATH="$REPO:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -P -m "t5pt.$command" "$@" ;;
esac
