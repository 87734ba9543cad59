#!/usr/bin/env bash
# One entry point that sets up and runs t5pt on a fresh machine.
#
#   ./launch.sh                 create .venv if needed, then run the embedded demo
#   ./launch.sh test [ARGS]     create .venv if needed, then run the test suite (pytest ARGS)
#   ./launch.sh train ARGS      python -m t5pt.train ARGS  (likewise infer / eval / demo)
#
# The virtual environment is (re)installed whenever requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV="${T5PT_VENV:-.venv}"

setup() {
  local stamp="$VENV/.requirements.sha256"
  local want
  want="$(sha256sum requirements.txt | cut -d' ' -f1)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "t5pt: creating $VENV with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "t5pt: installing requirements.txt into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    echo "$want" > "$stamp"
  fi
}

setup
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command="${1:-demo}"
[[ $# -gt 0 ]] && shift
case "$command" in
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  demo|train|infer|eval) exec "$VENV/bin/python" -m "t5pt.$command" "$@" ;;
  *) echo "usage: ./launch.sh [demo|test|train|infer|eval] [ARGS...]" >&2; exit 2 ;;
esac
