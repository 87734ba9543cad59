#!/usr/bin/env bash
# Batch inference, t5x-style:  ./infer.sh --gin.CHECKPOINT_PATH=... --gin.INFER_OUTPUT_DIR=...
# Placeholder until decoding lands (issue 4, t5pt/infer.py); see README "Status".
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -f t5pt/infer.py ]]; then
  echo "t5pt: infer.sh is not implemented yet: decoding and batch inference arrive with" \
       "issue 4 (t5pt/decoding.py, t5pt/infer.py). Teacher-forced evaluation already runs" \
       "during training (EVAL_PERIOD)." >&2
  exit 3
fi
exec ./launch.sh infer "$@"
