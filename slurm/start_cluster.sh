#!/usr/bin/env bash
# Start a real one-node SLURM cluster with accounting (slurmdbd + MariaDB) on this machine, without systemd.
#
# Usage:   bash slurm/start_cluster.sh            (as root)
# Stop:    bash slurm/stop_cluster.sh
#
# What it does, in order (each step is skipped when already done, so running it twice is cheap):
#   1. installs the Debian packages if a daemon is missing (apt-get update only when the install needs it);
#   2. writes /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf and /etc/slurm/cgroup.conf (standard paths, so
#      sbatch/sinfo/sacct work without environment variables); a daemon whose config changed is restarted;
#   3. starts munged (as the munge user), mariadbd (private datadir in the state dir, TCP on 127.0.0.1),
#      slurmdbd, slurmctld and slurmd, each in its own session, and records every PID in $STATE/pids/NAME.pid;
#   4. waits (bounded) until `sinfo` shows the node idle and `sacct` answers; on failure prints the log tail.
#
# Environment:
#   SDXL_SLURM_STATE    state dir: PIDs, logs, spool, MariaDB datadir       (default /tmp/sdxl-slurm)
#   SDXL_SLURM_DB_PORT  TCP port of the private MariaDB on 127.0.0.1        (default 3307; 3306 is left alone)
#   SDXL_SLURM_WAIT     seconds to wait for each daemon to answer           (default 60)
#   SDXL_SLURM_CLUSTER  ClusterName                                         (default sdxl)
set -euo pipefail

T0=$EPOCHREALTIME
STATE=${SDXL_SLURM_STATE:-/tmp/sdxl-slurm}
DB_PORT=${SDXL_SLURM_DB_PORT:-3307}
WAIT=${SDXL_SLURM_WAIT:-60}
CLUSTER=${SDXL_SLURM_CLUSTER:-sdxl}
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
ETC=/etc/slurm
LOGS=$STATE/logs
PIDS=$STATE/pids
STARTED=()
KEPT=()

log() { printf '[start_cluster %5ss] %s\n' "$(elapsed)" "$*"; }
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
die() {
  echo "start_cluster: ERROR: $*" >&2
  for f in "$LOGS"/*.log /var/log/munge/munged.log; do
    [ -s "$f" ] || continue
    echo "---- tail of $f ----" >&2
    tail -n 25 "$f" >&2
  done
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (it writes /etc/slurm and starts daemons)"

# ---------------------------------------------------------------------------------------------------------------
# 1. packages
# ---------------------------------------------------------------------------------------------------------------
missing=0
for c in slurmctld slurmd slurmdbd sbatch sinfo sacct sacctmgr munged mariadbd mariadb-install-db; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || { missing=1; break; }
done
[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ] \
  || ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || missing=1
if [ "$missing" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y --no-install-recommends "${PKGS[@]}"; }
  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    log "apt-get update (no package lists yet)"
    apt-get update -qq
  fi
  log "installing ${PKGS[*]}"
  if ! apt_install >"$STATE.apt.log" 2>&1 && ! { apt-get update -qq && apt_install >>"$STATE.apt.log" 2>&1; }; then
    tail -n 30 "$STATE.apt.log" >&2
    die "apt-get install failed"
  fi
  # Debian's postinst may have started daemons through init scripts; the cluster below is ours alone.
fi
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$STATE" "$LOGS" "$PIDS" "$STATE/slurmctld" "$STATE/slurmd" "$ETC"
chmod 755 "$STATE" "$LOGS"

# ---------------------------------------------------------------------------------------------------------------
# helpers: PID bookkeeping (only processes we started, verified by /proc/PID/comm)
# ---------------------------------------------------------------------------------------------------------------
# alive NAME COMM -> 0 if $PIDS/NAME.pid names a live process whose comm starts with COMM
alive() {
  local f=$PIDS/$1.pid pid comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$2"* ]]
}

# launch NAME COMM CMD... : start CMD in its own session with output in $LOGS/NAME.log, record its PID
launch() {
  local name=$1 comm=$2
  shift 2
  # setsid from a non-interactive shell's background child execs in place (no fork), so $! is the daemon itself
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  sleep 0.2
  if ! alive "$name" "$comm"; then
    sleep 0.5
    alive "$name" "$comm" || die "$name exited right after start (pid $pid)"
  fi
  STARTED+=("$name=$pid")
  log "started $name (pid $pid)"
}

# stop_one NAME : TERM, bounded wait, KILL — used when a config change needs a restart
stop_one() {
  local f=$PIDS/$1.pid pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# wait_for DESC CMD... : retry CMD every 0.25 s for up to $WAIT s
wait_for() {
  local desc=$1
  shift
  local deadline=$(($(date +%s) + WAIT))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${WAIT}s waiting for $desc"
    sleep 0.25
  done
}

# write_if_changed PATH MODE : stdin -> PATH when the content differs; returns 0 if it changed
write_if_changed() {
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 1
  fi
  install -m "$mode" -o root -g root "$tmp" "$path"
  rm -f "$tmp"
  return 0
}

# ---------------------------------------------------------------------------------------------------------------
# 2. configuration
# ---------------------------------------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
[ -n "$MEM" ] || MEM=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
REALMEM=$((MEM * 90 / 100))   # below what slurmd -C reports, or the node drains ("Low RealMemory")
DB_PASS=sdxl-slurm-local

SLURM_CHANGED=0
write_if_changed "$ETC/slurm.conf" 644 <<EOF && SLURM_CHANGED=1 || true
# Written by sdxl_dist_log slurm/start_cluster.sh — a one-node test cluster. Overwritten on every start.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SwitchType=switch/none
JobRequeue=1
ReturnToService=2
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# accounting through slurmdbd + MariaDB: sacct must work (submitit uses it to see jobs that died)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# fast turnaround for tests
SchedulerType=sched/backfill
KillWait=5
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# cgroup.conf is not used by proctrack/linuxproc + task/none; it is written so a stray read finds sane values.
write_if_changed "$ETC/cgroup.conf" 644 <<EOF && SLURM_CHANGED=1 || true
# Written by sdxl_dist_log slurm/start_cluster.sh. Unused with ProctrackType=proctrack/linuxproc, TaskPlugin=task/none.
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
EOF

DBD_CHANGED=0
write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF && DBD_CHANGED=1 || true
# Written by sdxl_dist_log slurm/start_cluster.sh. Must be mode 600 and owned by SlurmUser (root).
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

# ---------------------------------------------------------------------------------------------------------------
# 3a. munge
# ---------------------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  log "created /etc/munge/munge.key"
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if alive munged munged; then
  KEPT+=("munged=$(cat "$PIDS/munged.pid")")
elif munge_ok; then
  log "a munged we did not start already answers; using it (stop_cluster.sh will leave it alone)"
else
  rm -f /run/munge/munged.pid
  launch munged munged setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged -F
fi
wait_for "munged (munge -n | unmunge)" munge_ok

# ---------------------------------------------------------------------------------------------------------------
# 3b. MariaDB: private datadir, TCP 127.0.0.1:$DB_PORT, socket in the state dir
# ---------------------------------------------------------------------------------------------------------------
DATADIR=$STATE/mariadb
DBRUN=$STATE/mariadb-run          # owned by mysql: socket and pid file
SOCK=$DBRUN/mysqld.sock
sql() { mariadb --no-defaults --protocol=socket -S "$SOCK" -uroot "$@"; }
if alive mariadb mariadbd; then
  KEPT+=("mariadb=$(cat "$PIDS/mariadb.pid")")
else
  if [ ! -d "$DATADIR/mysql" ]; then
    rm -rf "$DATADIR"
    mkdir -p "$DATADIR"
    chown mysql:mysql "$DATADIR"
    log "initialising MariaDB datadir $DATADIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 || { tail -n 30 "$LOGS/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  mkdir -p "$DBRUN"
  chown -R mysql:mysql "$DATADIR" "$DBRUN"
  launch mariadb mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DATADIR" --socket="$SOCK" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DBRUN/mariadbd.pid" \
    --skip-log-bin --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=2 \
    --skip-name-resolve
fi
wait_for "MariaDB on $SOCK" sql -e "SELECT 1"
sql <<EOF || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

# ---------------------------------------------------------------------------------------------------------------
# 3c. slurmdbd, then the cluster record, then slurmctld and slurmd
# ---------------------------------------------------------------------------------------------------------------
if [ "$DBD_CHANGED" = 1 ] && alive slurmdbd slurmdbd; then log "slurmdbd.conf changed: restarting slurmdbd"; stop_one slurmdbd; fi
if alive slurmdbd slurmdbd; then
  KEPT+=("slurmdbd=$(cat "$PIDS/slurmdbd.pid")")
else
  launch slurmdbd slurmdbd /usr/sbin/slurmdbd -D
fi
wait_for "slurmdbd (sacctmgr show cluster)" sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
  log "registered cluster $CLUSTER in slurmdbd"
fi

if [ "$SLURM_CHANGED" = 1 ]; then
  for d in slurmd slurmctld; do
    if alive "$d" "$d"; then log "slurm.conf changed: restarting $d"; stop_one "$d"; fi
  done
fi
if alive slurmctld slurmctld; then
  KEPT+=("slurmctld=$(cat "$PIDS/slurmctld.pid")")
else
  launch slurmctld slurmctld /usr/sbin/slurmctld -D
fi
wait_for "slurmctld (scontrol ping)" bash -c 'scontrol ping | grep -q "is UP"'

if alive slurmd slurmd; then
  KEPT+=("slurmd=$(cat "$PIDS/slurmd.pid")")
else
  launch slurmd slurmd /usr/sbin/slurmd -D
fi

# ---------------------------------------------------------------------------------------------------------------
# 4. wait for an idle node and a working sacct
# ---------------------------------------------------------------------------------------------------------------
node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
deadline=$(($(date +%s) + WAIT))
resumed=0
while :; do
  st=$(node_state || true)
  case "$st" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | drained* | fail*)
      if [ "$resumed" = 0 ]; then
        log "node $HOST is '$st' (left from an earlier run?): resuming it"
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        resumed=1
      fi ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || { sinfo -N -l >&2 || true; die "node $HOST not idle after ${WAIT}s (state '$st')"; }
  sleep 0.25
done
wait_for "sacct" sacct -n -X --starttime now-1hours

printf '\n'
sinfo
printf '\n'
[ ${#STARTED[@]} -gt 0 ] && log "started: ${STARTED[*]}"
[ ${#KEPT[@]} -gt 0 ] && log "already running (kept): ${KEPT[*]}"
log "cluster '$CLUSTER' ready: node $HOST, CPUs=$CPUS RealMemory=$REALMEM, partition debug; state $STATE"
log "done in $(elapsed) s"
