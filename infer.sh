#!/usr/bin/env bash
# Batch inference, t5x-style: decodes a task split or an input file into JSONL.
#   ./infer.sh --gin.CHECKPOINT_PATH="'/runs/x'" --gin.INFER_OUTPUT_DIR="'/out'"
# Uses gin/infer.gin unless --gin_file is given; see docs/inference.md.
exec "$(dirname "$0")/launch.sh" infer "$@"
