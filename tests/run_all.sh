#!/usr/bin/env bash
# The project's one test command (README and .ci/run both call it): starts the local SLURM cluster, runs the whole
# suite, stops the cluster by the PIDs it recorded. Exits non-zero on any failure, and when no test ran.
#   bash tests/run_all.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "run_all: $PY not found; install first (see README)" >&2; exit 2; }

started_cluster=0
if [ "${SDXL_SKIP_SLURM:-0}" != 1 ]; then
  bash slurm/start_cluster.sh || { echo "run_all: the local SLURM cluster did not start" >&2; exit 1; }
  started_cluster=1
fi
stop_cluster() { [ "$started_cluster" = 1 ] && bash slurm/stop_cluster.sh >/dev/null 2>&1; started_cluster=0; }
trap stop_cluster EXIT

"$PY" -m pytest -q --durations=15 "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run_all: pytest collected no tests; that is a failure" >&2
  rc=1
fi
exit "$rc"
