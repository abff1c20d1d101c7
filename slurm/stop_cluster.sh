#!/usr/bin/env bash
# Stop the one-node SLURM cluster that slurm/start_cluster.sh started.
#
# Stops exactly the PIDs recorded in $SDXL_SLURM_STATE/pids (default /tmp/sdxl-slurm/pids), in reverse start order:
# slurmd, slurmctld, slurmdbd, mariadb, munged. Each gets SIGTERM, a bounded wait, then SIGKILL. A PID is only
# signalled when /proc/PID/comm still names the daemon recorded (a recycled PID is left alone). Nothing is killed
# by name. Job steps (slurmstepd) still running under our slurmd are ended through `scancel` first, and any
# slurmstepd whose parent chain leads to our slurmd is signalled by PID.
#
# The state dir (spool, MariaDB datadir, logs) is kept, so the next start is fast; pass --purge to delete it.
set -uo pipefail

STATE=${SDXL_SLURM_STATE:-/tmp/sdxl-slurm}
PIDS=$STATE/pids
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1
export PATH=$PATH:/usr/sbin:/sbin

if [ ! -d "$PIDS" ]; then
  echo "stop_cluster: no state in $PIDS: nothing to stop"
  [ "$PURGE" = 1 ] && rm -rf "$STATE"
  exit 0
fi

# comm prefix expected for each recorded name
declare -A COMM=([slurmd]=slurmd [slurmctld]=slurmctld [slurmdbd]=slurmdbd [mariadb]=mariadbd [munged]=munged)

ours() { # ours NAME -> prints PID when it is alive and still that daemon
  local f=$PIDS/$1.pid pid comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "${COMM[$1]}"* ]] || return 1
  echo "$pid"
}

stop_pid() { # stop_pid NAME PID
  local name=$1 pid=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 150); do # up to 15 s
    kill -0 "$pid" 2>/dev/null || { echo "stop_cluster: stopped $name (pid $pid)"; return 0; }
    # a zombie child of ours counts as stopped
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && { echo "stop_cluster: stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "stop_cluster: killed $name (pid $pid) after 15 s"
}

# End running jobs first, while slurmctld is still up, so no slurmstepd outlives slurmd.
if ours slurmctld >/dev/null && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    echo "stop_cluster: cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# slurmstepd processes forked by our slurmd (they re-parent to init when slurmd dies, so collect them now)
STEPDS=()
if sd=$(ours slurmd); then
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    [ "$(awk '{print $4}' "$p/stat" 2>/dev/null)" = "$sd" ] && STEPDS+=("$pid")
  done
fi

for name in slurmd slurmctld slurmdbd mariadb munged; do
  if pid=$(ours "$name"); then
    stop_pid "$name" "$pid"
  elif [ -s "$PIDS/$name.pid" ]; then
    echo "stop_cluster: $name (pid $(cat "$PIDS/$name.pid")) was not running"
  fi
  rm -f "$PIDS/$name.pid"
done

for pid in "${STEPDS[@]}"; do
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmstepd ]; then
    kill -KILL "$pid" 2>/dev/null && echo "stop_cluster: killed leftover slurmstepd (pid $pid)"
  fi
done

if [ "$PURGE" = 1 ]; then
  rm -rf "$STATE"
  echo "stop_cluster: removed $STATE"
fi
echo "stop_cluster: done"
