#!/usr/bin/env bash
# Run the sdxl_dist_log demo training on this machine with torchrun (one node, NPROC workers; gloo on CPU).
#
#   bash examples/torchrun_demo.sh                  # 2 workers
#   NPROC=4 bash examples/torchrun_demo.sh --steps 50   # arguments go to the demo
set -euo pipefail
exec torchrun --standalone --nproc_per_node="${NPROC:-2}" -m sdxl_dist_log.cli demo "$@"
