#!/usr/bin/env bash
# A real single-node SLURM cluster with accounting on this machine (Debian 12, root, no systemd).
#
#   scripts/slurm-local.sh start    install what is missing, start what is not running, wait for
#                                   an idle node (a no-op that succeeds when already up)
#   scripts/slurm-local.sh stop     cancel the cluster's jobs, stop exactly the daemons `start`
#                                   started (by recorded pid, in reverse order)
#   scripts/slurm-local.sh status   print sinfo; exit 1 when the cluster does not answer
#
# Daemons: munged (reused, never stopped, when one already answers), mariadbd (likewise),
# slurmdbd, slurmctld, slurmd. Their pids are recorded in $CFH_SLURM_STATE (default
# /run/cfh-slurm/pids). Settings: cred_expire=10 so a
# requeued job restarts at once, sched_interval=5,bf_interval=2 so array tasks start at once,
# CR_Core with CPUs=$CFH_SLURM_CPUS (default 4, more than the machine has, via
# SlurmdParameters=config_overrides) so array tasks run side by side, and $CFH_SLURM_GPUS
# (default 2) fake GPUs (character devices /run/fakegpuN) so `--gpus-per-node` requests schedule.
# Partitions: `debug` (default) and `gpu`, both on this node.
set -euo pipefail

STATE=${CFH_SLURM_STATE:-/run/cfh-slurm}
LOGDIR=${CFH_SLURM_LOGS:-/var/log/cfh-slurm}
SPOOL=/var/spool/cfh-slurm
CPUS=${CFH_SLURM_CPUS:-4}
GPUS=${CFH_SLURM_GPUS:-2}
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
ME=slurm-local.sh
T0=$(date +%s.%N)

say() { printf '%s: %s\n' "$ME" "$*"; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# pid_alive PID NAME: the process exists, is not a zombie (pid 1 here may not reap), and is NAME.
pid_alive() {
  local pid=$1 name=$2 st
  [[ -n $pid && -r /proc/$pid/status ]] || return 1
  st=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ $st != Z && $st != X ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# recorded NAME: the pid this script recorded for NAME, if that process is still alive.
recorded() {
  local pid
  pid=$(awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$STATE/pids" 2>/dev/null)
  pid_alive "$pid" "$1" && echo "$pid"
}

STARTED=0
record() { echo "$1 $2" >>"$STATE/pids"; STARTED=1; say "started $1 (pid $2)"; }

# running_pid NAME: any live process called NAME (to detect daemons this script did not start).
running_pid() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if [[ $(cat "$d/comm" 2>/dev/null) == "$1" ]] && pid_alive "$pid" "$1"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not come up within ${limit}s (logs: $LOGDIR)"
}

pidfile_pid() {  # pidfile_pid FILE NAME: wait for a daemon's pid file, print the pid
  local i pid
  for ((i = 0; i < 100; i++)); do
    pid=$(cat "$1" 2>/dev/null || true)
    if pid_alive "$pid" "$2"; then echo "$pid"; return 0; fi
    sleep 0.1
  done
  die "$2 did not start (no live pid in $1; logs: $LOGDIR)"
}

host() { hostname -s; }

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get to install them"
  say "installing ${missing[*]}"
  # Keep the packages' maintainer scripts from starting daemons: this script starts them.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -qq &&
      apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}"
  } >"$LOGDIR/apt.log" 2>&1 || rc=$?
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc); see $LOGDIR/apt.log: $(tail -n 3 "$LOGDIR/apt.log" | tr '\n' ' ')"
  say "installed in $(elapsed)s"
}

write_if_changed() {  # write_if_changed FILE MODE: stdin -> FILE when the content differs
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
  else
    install -m "$2" "$tmp" "$1"
    rm -f "$tmp"
  fi
}

write_configs() {
  local h mem last
  h=$(host)
  mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
  last=$((GPUS - 1))
  mkdir -p /etc/slurm "$SPOOL/ctld" "$SPOOL/d"
  if [[ -f /etc/slurm/slurm.conf ]] && ! grep -q '^# cfh slurm-local' /etc/slurm/slurm.conf; then
    [[ -f /etc/slurm/slurm.conf.before-cfh ]] || cp /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-cfh
    say "kept the previous /etc/slurm/slurm.conf as slurm.conf.before-cfh"
  fi
  local gres_node="" gres_types=""
  if ((GPUS > 0)); then
    gres_node=" Gres=gpu:$GPUS"
    gres_types="GresTypes=gpu"
  fi
  write_if_changed /etc/slurm/slurm.conf 644 <<EOF
# cfh slurm-local: written by scripts/slurm-local.sh; rewritten on every start.
ClusterName=ci
SlurmctldHost=$h(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=2
SlurmctldParameters=preempt_send_user_signal
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
$gres_types
NodeName=$h NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem$gres_node State=UNKNOWN
PartitionName=debug Nodes=$h Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$h Default=NO MaxTime=INFINITE State=UP
EOF
  if ((GPUS > 0)); then
    write_if_changed /etc/slurm/gres.conf 644 <<<"NodeName=$h Name=gpu File=/run/fakegpu[0-$last]"
    local i
    for ((i = 0; i < GPUS; i++)); do
      [[ -c /run/fakegpu$i ]] || { rm -f "/run/fakegpu$i"; mknod -m 666 "/run/fakegpu$i" c 1 3; }
    done
  else
    rm -f /etc/slurm/gres.conf
  fi
  write_if_changed /etc/slurm/slurmdbd.conf 600 <<EOF
# cfh slurm-local: written by scripts/slurm-local.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$LOGDIR/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
}

start_munged() {
  local pid
  if pid=$(recorded munged); then return 0; fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "reusing the running munged (this script will not stop it)"
    return 0
  fi
  install -d -o munge -g munge -m 755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force >>"$LOGDIR/munged.out" 2>&1 9>&-
  pid=$(pidfile_pid /run/munge/munged.pid munged)
  record munged "$pid"
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

mariadb_up() { mariadb-admin --socket=/run/mysqld/mysqld.sock ping; }

start_mariadb() {
  local pid
  if pid=$(recorded mariadbd); then return 0; fi
  if mariadb_up >/dev/null 2>&1; then
    say "reusing the running MariaDB on /run/mysqld/mysqld.sock (this script will not stop it)"
    return 0
  fi
  install -d -o mysql -g mysql -m 755 /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
      >"$LOGDIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $LOGDIR"
  fi
  setsid mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    </dev/null >>"$LOGDIR/mariadbd.log" 2>&1 9>&- &
  pid=$!
  record mariadbd "$pid"
  wait_for 30 mariadbd mariadb_up
}

start_slurm_daemon() {  # start_slurm_daemon NAME CHECK...
  local name=$1 pid other
  shift
  if pid=$(recorded "$name"); then return 0; fi
  if other=$(running_pid "$name"); then
    die "a $name (pid $other) that this script did not start is running; stop it first"
  fi
  rm -f "$STATE/$name.pid"
  "/usr/sbin/$name" >>"$LOGDIR/$name.out" 2>&1 9>&- || die "$name failed to start; see $LOGDIR/$name.log"
  pid=$(pidfile_pid "$STATE/$name.pid" "$name")
  record "$name" "$pid"
  [[ $# -eq 0 ]] || wait_for 30 "$name" "$@"
}

node_state() { sinfo -h -N -n "$(host)" -o %T 2>/dev/null | head -n 1; }

wait_idle() {
  local i st="" resumed=0
  for ((i = 0; i < 300; i++)); do
    st=$(node_state || true)
    case $st in
      idle | mixed | allocated | completing) return 0 ;;
      *down* | *drain* | *drng* | *fail* | inval*)
        if ((resumed == 0 || i % 50 == 0)); then
          scontrol update nodename="$(host)" state=resume >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.1
  done
  die "node $(host) is '${st:-unknown}' after 30s, not idle (logs: $LOGDIR)"
}

cmd_start() {
  ((EUID == 0)) || die "must run as root (it installs packages and starts daemons)"
  mkdir -p "$STATE" "$LOGDIR"
  exec 9>"$STATE/lock"
  flock -w 300 9 || die "another slurm-local.sh holds $STATE/lock"
  if ! getent hosts "$(host)" >/dev/null; then
    echo "127.0.0.1 $(host)" >>/etc/hosts
    say "added '127.0.0.1 $(host)' to /etc/hosts"
  fi
  install_packages
  write_configs
  start_munged
  start_mariadb
  start_slurm_daemon slurmdbd sacctmgr -n list cluster
  start_slurm_daemon slurmctld scontrol ping
  start_slurm_daemon slurmd
  wait_idle
  ((STARTED)) || say "already up"
  say "cluster up in $(elapsed)s: $(sinfo -h -o '%P %a %D %T %C' | tr '\n' ';')"
}

stop_pid() {  # stop_pid NAME PID: TERM, wait, KILL; a zombie counts as stopped
  local name=$1 pid=$2 i
  pid_alive "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    pid_alive "$pid" "$name" || { say "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $name (pid $pid) after 30s"
}

cmd_stop() {
  ((EUID == 0)) || die "must run as root"
  [[ -d $STATE ]] || { say "nothing to stop"; return 0; }
  exec 9>"$STATE/lock"
  flock -w 300 9 || die "another slurm-local.sh holds $STATE/lock"
  [[ -s $STATE/pids ]] || { say "nothing to stop"; return 0; }
  # Jobs of this cluster would otherwise outlive slurmd (or come back on the next start).
  if recorded slurmctld >/dev/null; then
    local jobs i
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
        sleep 0.1
      done
    fi
  fi
  local name pid
  while read -r name pid; do
    stop_pid "$name" "$pid"
  done < <(tac "$STATE/pids")
  rm -f "$STATE/pids"
  say "stopped in $(elapsed)s"
}

cmd_status() {
  if ! command -v sinfo >/dev/null; then
    echo "$ME: slurm is not installed" >&2
    return 1
  fi
  sinfo || return 1
  if [[ -s $STATE/pids ]]; then
    echo "started by $ME:"
    local name pid st
    while read -r name pid; do
      if pid_alive "$pid" "$name"; then st=running; else st=stopped; fi
      printf '  %-10s pid %-8s %s\n' "$name" "$pid" "$st"
    done <"$STATE/pids"
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $ME start|stop|status" >&2; exit 2 ;;
esac
