#!/usr/bin/env bash
# One entry point that sets up and runs t5pt on a fresh machine.
#
#   ./launch.sh                 create .venv if needed, then run the embedded demo
#   ./launch.sh test [ARGS]     create .venv if needed, then run the test suite (pytest ARGS)
#   ./launch.sh train ARGS      python -m t5pt.train ARGS  (likewise infer / eval / export /
#                               peft_import / demo)
#
# Several hosts (README "Several hosts"): the same command on every host, plus
#   multi-host GPU   --multiprocess_gpu --coordinator_address=HOST0:1234 --process_count=N
#                    --process_index=I   (or --multiprocess_gpu alone under SLURM / MPI / GKE)
#   Cloud TPU pod    nothing: gcloud compute tpus tpu-vm ssh POD --worker=all --command
#                    "cd t5pt && ./launch.sh train --gin_file=..."
#
# The virtual environment is (re)installed whenever a requirements file changes; tests
# use requirements-test.txt (the runtime + pytest + CPU torch/transformers/peft).
#
# Commands run in the directory you start them from: relative paths in flags and gin
# bindings resolve there, and its Python modules (e.g. a my_tasks.py registering your
# tasks) are importable, after t5pt's own packages. Tests run from the repository.
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV="$(realpath -m "${T5PT_VENV:-$REPO/.venv}")"

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

command="${1:-demo}"
[[ $# -gt 0 ]] && shift
if [[ "$command" == test ]]; then setup requirements-test.txt; else setup requirements.txt; fi
case "$command" in
  test)
    cd "$REPO"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  demo|train|infer|eval|export|peft_import)
    # -P: the working directory comes after t5pt on the import path, not before it.
    export PYTHONPATH="$REPO:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -P -m "t5pt.$command" "$@" ;;
  *) echo "usage: ./launch.sh [demo|test|train|infer|eval|export|peft_import] [ARGS...]" >&2; exit 2 ;;
esac
