#!/usr/bin/env bash
# A real SLURM cluster with accounting on this machine (Debian 12, root, no systemd): one node by
# default, or N (2..4) nodes, each slurmd in its own network namespace.
#
#   scripts/slurm-local.sh start [--nodes N]
#                                   install what is missing, start what is not running, wait for
#                                   N idle nodes (a no-op that succeeds when already up with N
#                                   nodes; a cluster up with another node count is reconfigured:
#                                   its slurmctld and slurmd stop, slurm.conf is rewritten, they
#                                   start again; munged, mariadbd and slurmdbd keep running)
#   scripts/slurm-local.sh stop     cancel the cluster's jobs, stop exactly the daemons `start`
#                                   started (by recorded pid, in reverse order), then remove the
#                                   namespaces, links, bridge and /etc/hosts lines it made
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
#
# --nodes N (N >= 2): nodes cfh-node1..N (CPUs=$CFH_SLURM_CPUS per node, default 2;
# $CFH_SLURM_GPUS fake GPUs per node; RealMemory = MemTotal / N), both partitions on all of
# them. Node i runs its slurmd (`slurmd -N cfh-nodeI`) in network namespace cfh-nodeI under its
# own UTS namespace (hostname cfh-nodeI), so its job steps see that hostname and that address.
# Network: bridge cfh-br0 with the host at <net>.1/24 (slurmctld is reached there:
# SlurmctldHost=<host>(<net>.1)); veth cfh-nodeI-h (host side, on the bridge) / cfh-nodeI-p
# (inside, <net>.(I+1)/24), lo up inside; no default route, no NAT: traffic goes only to loopback
# and to these addresses. <net> is the first of 10.77.0 10.78.0 10.79.0 10.80.0 that no host
# address or route overlaps. /etc/hosts gets "<addr> cfh-nodeI # cfh-slurm-local" (only lines
# with that tag are removed again). The cluster's shape is in $CFH_SLURM_STATE/cluster.env
# (CFH_SLURM_NODES, CFH_SLURM_NODE_NAMES, CFH_SLURM_NODE_ADDRS, CFH_SLURM_CTLD_ADDR,
# CFH_SLURM_SUBNET; comma-separated lists, first node first). Where the namespaces cannot be
# made (not root, `ip netns add` or `unshare --uts` fails) start exits 3 with one line on stderr.
# Checked: `srun -N2` tasks see hostnames cfh-node1/2 and SLURM_NODEID 0/1; a torch.distributed
# gloo all_reduce across the two nodes (MASTER_ADDR = cfh-node1's address) works. Inside a job,
# squeue/scontrol/srun reach slurmctld, but sacct does not reach slurmdbd (it listens on the host's
# localhost): run sacct on the host.
# Measured December 2026 on this project's 2-core machine (packages installed): from nothing
# running to 2 idle nodes 3.7-4.2 s (1 node: 2.8 s); 1 -> 2 nodes (reconfigure) 3.2-4.6 s,
# 2 -> 1 3.3-3.9 s; start when already up 0.5 s (1 node 0.3 s); stop of 2 nodes 1.1-1.6 s.
set -euo pipefail

STATE=${CFH_SLURM_STATE:-/run/cfh-slurm}
LOGDIR=${CFH_SLURM_LOGS:-/var/log/cfh-slurm}
SPOOL=/var/spool/cfh-slurm
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
ME=slurm-local.sh
T0=$(date +%s.%N)
MAX_NODES=4
NET_CANDIDATES=(10.77.0 10.78.0 10.79.0 10.80.0)
BRIDGE=cfh-br0
HOSTS_TAG="# cfh-slurm-local"
NODES=1
NET="" # the /24 prefix in use when NODES > 1, e.g. 10.77.0

say() { printf '%s: %s\n' "$ME" "$*"; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }
die_ns() { printf '%s: cannot make network namespaces: %s\n' "$ME" "$*" >&2; exit 3; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# pid_alive PID NAME: the process exists, is not a zombie (pid 1 here may not reap), and is NAME.
pid_alive() {
  local pid=$1 name=$2 st
  [[ -n $pid && -r /proc/$pid/status ]] || return 1
  st=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ $st != Z && $st != X ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# recorded KEY: the pid this script recorded for KEY (a daemon's name, or slurmd:NODE for the
# slurmd of node NODE of a multi-node cluster), if that process is still alive.
recorded() {
  local pid
  pid=$(awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$STATE/pids" 2>/dev/null)
  pid_alive "$pid" "${1%%:*}" && echo "$pid"
}

STARTED=0
record() { echo "$1 $2" >>"$STATE/pids"; STARTED=1; say "started $1 (pid $2)"; }

# running_pids NAME: every live process called NAME (to detect daemons this script did not start).
running_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if [[ $(cat "$d/comm" 2>/dev/null) == "$1" ]] && pid_alive "$pid" "$1"; then
      echo "$pid"
    fi
  done
}
running_pid() {
  local p
  p=$(running_pids "$1" | head -n 1)
  [[ -n $p ]] && echo "$p"
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

# The nodes of the configured cluster, first node first.
node_names() {
  local i
  if ((NODES == 1)); then host; return; fi
  for ((i = 1; i <= NODES; i++)); do echo "cfh-node$i"; done
}
node_addr() { echo "$NET.$(($1 + 1))"; } # node_addr I: the address of cfh-nodeI

# The node count of the cluster the state dir describes (1 where none is recorded: a cluster
# started before --nodes existed has one node).
recorded_nodes() {
  local n
  n=$(awk -F= '$1 == "CFH_SLURM_NODES" { print $2 }' "$STATE/cluster.env" 2>/dev/null || true)
  echo "${n:-1}"
}

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

# ------------------------------------------------------------------ network (--nodes N > 1)
ip2int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

overlaps() {  # overlaps A[/LEN] B[/LEN]: the two IPv4 prefixes share an address
  local a=${1%/*} la=32 b=${2%/*} lb=32 l mask
  [[ $1 != */* ]] || la=${1#*/}
  [[ $2 != */* ]] || lb=${2#*/}
  l=$((la < lb ? la : lb))
  mask=$(((0xffffffff << (32 - l)) & 0xffffffff))
  (($(($(ip2int "$a") & mask)) == $(($(ip2int "$b") & mask))))
}

host_prefixes() {  # every IPv4 prefix the host has an address or a route (not default) in
  ip -4 -o addr show | awk -v br="$BRIDGE" '$2 != br { print $4 }'
  { ip -4 route show table all 2>/dev/null || ip -4 route show; } |
    awk -v br="$BRIDGE" '
      { for (i = 1; i < NF; i++) if ($i == "dev" && $(i + 1) == br) next }
      { d = $1 }
      d ~ /^(local|broadcast|unicast|multicast|anycast|blackhole|unreachable|prohibit|throw)$/ { d = $2 }
      d ~ /^[0-9]/ { print d }'
}

pick_net() {  # the first candidate /24 that no host address or route overlaps
  local c p used
  for c in "${NET_CANDIDATES[@]}"; do
    used=""
    while read -r p; do
      [[ -n $p ]] || continue
      if overlaps "$c.0/24" "$p"; then used=$p; break; fi
    done < <(host_prefixes)
    [[ -n $used ]] || { echo "$c"; return 0; }
  done
  return 1
}

# net_fail MESSAGE: undo the network made so far (unless a multi-node cluster runs on it), exit 3
net_fail() {
  if (($(recorded_nodes) == 1)) || ! slurm_running; then net_down >/dev/null; fi
  die_ns "$1"
}
net_err() { tr -s '\n' ' ' <"$LOGDIR/net.err" | sed 's/ *$//'; }
link_exists() { ip link show "$1" >/dev/null 2>&1; }
netns_exists() { ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qx "$1"; }

kill_netns_pids() {  # kill_netns_pids NS: TERM then KILL every process left in namespace NS
  local ns=$1 pids i
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
  [[ -n ${pids// /} ]] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
    [[ -n ${pids// /} ]] || { say "stopped the processes left in namespace $ns"; return 0; }
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  say "killed the processes left in namespace $ns ($pids) after 5s"
}

hosts_lines() {  # rewrite this script's (tagged) /etc/hosts lines for the configured nodes
  local tmp i
  tmp=$(mktemp)
  grep -v -F "$HOSTS_TAG" /etc/hosts >"$tmp" || true
  if ((NODES > 1)); then
    for ((i = 1; i <= NODES; i++)); do
      printf '%s cfh-node%s %s\n' "$(node_addr "$i")" "$i" "$HOSTS_TAG" >>"$tmp"
    done
  fi
  # In place (cat, not mv): /etc/hosts may be a bind mount.
  cmp -s "$tmp" /etc/hosts || cat "$tmp" >/etc/hosts
  rm -f "$tmp"
}

node_net_down() {  # node_net_down I: remove namespace cfh-nodeI (its processes first), its veth
  local ns=cfh-node$1
  if netns_exists "$ns"; then
    kill_netns_pids "$ns"
    ip netns del "$ns" 2>/dev/null || true
  fi
  if link_exists "$ns-h"; then ip link del "$ns-h" 2>/dev/null || true; fi
}

net_down() {  # remove every namespace, link, bridge and /etc/hosts line of this script's names
  local i made=0 saved=$NODES
  for ((i = 1; i <= MAX_NODES; i++)); do
    if netns_exists "cfh-node$i" || link_exists "cfh-node$i-h"; then
      made=1
      node_net_down "$i"
    fi
  done
  if link_exists "$BRIDGE"; then ip link del "$BRIDGE" 2>/dev/null || true; made=1; fi
  if grep -q -F "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    NODES=1
    hosts_lines
    NODES=$saved
    made=1
  fi
  rm -f "$STATE/net"
  ((made == 0)) || say "removed the namespaces, links, bridge and /etc/hosts lines it made"
}

node_net_ok() {  # node_net_ok I: namespace cfh-nodeI exists, its address on a link that is up
  local ns=cfh-node$1
  netns_exists "$ns" && link_exists "$ns-h" &&
    ip -n "$ns" -4 -o addr show dev "$ns-p" up 2>/dev/null | grep -q " $(node_addr "$1")/24 "
}

node_net_up() {  # node_net_up I: namespace cfh-nodeI, its veth pair on the bridge, its address
  local ns=cfh-node$1 addr
  addr=$(node_addr "$1")
  node_net_ok "$1" && return 0
  node_net_down "$1"
  ip netns add "$ns" 2>"$LOGDIR/net.err" ||
    { net_fail "'ip netns add $ns' failed: $(net_err)"; }
  {
    ip link add "$ns-h" type veth peer name "$ns-p" &&
      ip link set "$ns-p" netns "$ns" &&
      ip link set "$ns-h" master "$BRIDGE" &&
      ip link set "$ns-h" up &&
      ip -n "$ns" link set lo up &&
      ip -n "$ns" addr add "$addr/24" dev "$ns-p" &&
      ip -n "$ns" link set "$ns-p" up
  } 2>"$LOGDIR/net.err" ||
    { net_fail "veth pair for $ns: $(net_err)"; }
  nsenter --net="/run/netns/$ns" unshare --uts true 2>"$LOGDIR/net.err" ||
    { net_fail "'unshare --uts' in $ns failed: $(net_err)"; }
}

net_up() {  # the bridge, one namespace per node, the /etc/hosts lines; sets NET
  local i
  NET=$(cat "$STATE/net" 2>/dev/null || true)
  if [[ -z $NET ]] || ! ip -4 -o addr show dev "$BRIDGE" 2>/dev/null | grep -q " $NET.1/24 "; then
    net_down >/dev/null
    NET=$(pick_net) ||
      die_ns "every candidate subnet (${NET_CANDIDATES[*]/%/.0/24}) overlaps an address or route of this host"
    ip link add "$BRIDGE" type bridge 2>"$LOGDIR/net.err" ||
      net_fail "'ip link add $BRIDGE type bridge' failed: $(net_err)"
    { ip addr add "$NET.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up; } 2>"$LOGDIR/net.err" ||
      { net_fail "bridge $BRIDGE: $(net_err)"; }
    echo "$NET" >"$STATE/net"
    say "bridge $BRIDGE at $NET.1/24"
  fi
  for ((i = 1; i <= NODES; i++)); do node_net_up "$i"; done
  for ((i = NODES + 1; i <= MAX_NODES; i++)); do node_net_down "$i"; done
  hosts_lines
}

write_cluster_env() {  # the cluster's shape, for tests: $STATE/cluster.env
  local names addrs ctld subnet i
  if ((NODES == 1)); then
    names=$(host) addrs=127.0.0.1 ctld=127.0.0.1 subnet=""
  else
    names="" addrs="" ctld=$NET.1 subnet=$NET.0/24
    for ((i = 1; i <= NODES; i++)); do
      names+=${names:+,}cfh-node$i
      addrs+=${addrs:+,}$(node_addr "$i")
    done
  fi
  write_if_changed "$STATE/cluster.env" 644 <<EOF
CFH_SLURM_NODES=$NODES
CFH_SLURM_NODE_NAMES=$names
CFH_SLURM_NODE_ADDRS=$addrs
CFH_SLURM_CTLD_ADDR=$ctld
CFH_SLURM_SUBNET=$subnet
EOF
}

# ------------------------------------------------------------------ configs
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
  # What differs between one node (the same file as before --nodes existed) and several.
  local ctld_addr=127.0.0.1 spool=$SPOOL/d pidf=$STATE/slurmd.pid logf=$LOGDIR/slurmd.log
  local node_lines="NodeName=$h NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem$gres_node State=UNKNOWN"
  local nodes=$h gres_lines="NodeName=$h Name=gpu File=/run/fakegpu[0-$last]" i n
  if ((NODES > 1)); then
    ctld_addr=$NET.1 spool=$SPOOL/d-%n pidf=$STATE/slurmd-%n.pid logf=$LOGDIR/slurmd-%n.log
    node_lines="" nodes="" gres_lines=""
    for ((i = 1; i <= NODES; i++)); do
      n=cfh-node$i
      mkdir -p "$SPOOL/d-$n"
      node_lines+="${node_lines:+$'\n'}NodeName=$n NodeHostname=$n NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=$((mem / NODES))$gres_node State=UNKNOWN"
      nodes+=${nodes:+,}$n
      gres_lines+="${gres_lines:+$'\n'}NodeName=$n Name=gpu File=/run/fakegpu[0-$last]"
    done
  fi
  write_if_changed /etc/slurm/slurm.conf 644 <<EOF
# cfh slurm-local: written by scripts/slurm-local.sh; rewritten on every start.
ClusterName=ci
SlurmctldHost=$h($ctld_addr)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$pidf
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$logf
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
$node_lines
PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$nodes Default=NO MaxTime=INFINITE State=UP
EOF
  if ((GPUS > 0)); then
    write_if_changed /etc/slurm/gres.conf 644 <<<"$gres_lines"
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

# ------------------------------------------------------------------ daemons
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

start_node_slurmds() {  # NODES > 1: `slurmd -N cfh-nodeI` in namespace cfh-nodeI, own hostname
  local i n pid mine=" " other
  for ((i = 1; i <= NODES; i++)); do
    if pid=$(recorded "slurmd:cfh-node$i"); then mine+="$pid "; fi
  done
  for other in $(running_pids slurmd); do
    [[ $mine == *" $other "* ]] ||
      die "a slurmd (pid $other) that this script did not start is running; stop it first"
  done
  for ((i = 1; i <= NODES; i++)); do
    n=cfh-node$i
    if recorded "slurmd:$n" >/dev/null; then continue; fi
    rm -f "$STATE/slurmd-$n.pid"
    # nsenter and unshare (without --fork) exec: slurmd and its job steps run in both namespaces,
    # so they see hostname $n and only the bridge's addresses and their own lo. Not `ip netns
    # exec`: it remounts /sys in a new mount namespace, which hides /sys/fs/cgroup, and slurmd
    # 22.05 then stops with "Unable to initialize cgroup plugin" (even with proctrack/linuxproc).
    nsenter --net="/run/netns/$n" unshare --uts sh -c 'hostname "$1" && exec /usr/sbin/slurmd -N "$1"' sh "$n" \
      >>"$LOGDIR/slurmd-$n.out" 2>&1 9>&- || die "slurmd for $n failed to start; see $LOGDIR/slurmd-$n.log"
    pid=$(pidfile_pid "$STATE/slurmd-$n.pid" slurmd)
    record "slurmd:$n" "$pid"
  done
}

RESUMED=" "
wait_idle() {  # every node idle (or busy); resume one that old state says is down or drained
  local i st="" n all
  for ((i = 0; i < 300; i++)); do
    all=1
    for n in $(node_names); do
      st=$(sinfo -h -N -n "$n" -o %T 2>/dev/null | head -n 1 || true)
      case $st in
        idle | mixed | allocated | completing) continue ;;
        *down* | *drain* | *drng* | *fail* | inval*)
          if [[ $RESUMED != *" $n "* ]] || ((i % 50 == 0)); then
            scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
            RESUMED+="$n "
          fi
          ;;
      esac
      all=0
      break
    done
    ((all)) && return 0
    sleep 0.1
  done
  die "node $n is '${st:-unknown}' after 30s, not idle (logs: $LOGDIR)"
}

cancel_jobs() {  # the cluster's jobs would otherwise outlive slurmd (or come back on a start)
  recorded slurmctld >/dev/null || return 0
  local jobs i
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [[ -n ${jobs// /} ]] || return 0
  say "cancelling jobs $jobs"
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
    sleep 0.1
  done
}

stop_pid() {  # stop_pid NAME PID [KEY]: TERM, wait, KILL; a zombie counts as stopped
  local name=$1 pid=$2 key=${3:-$1} i
  pid_alive "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    pid_alive "$pid" "$name" || { say "stopped $key (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $key (pid $pid) after 30s"
}

slurm_running() {  # a slurmctld or slurmd this script started is alive
  local key pid
  [[ -f $STATE/pids ]] || return 1
  while read -r key pid; do
    case $key in slurmd | slurmd:* | slurmctld) pid_alive "$pid" "${key%%:*}" && return 0 ;; esac
  done <"$STATE/pids"
  return 1
}

# A start with another node count than the running cluster's: stop the slurmd(s) and slurmctld it
# started (recorded pids, reverse order); munged, mariadbd and slurmdbd keep running.
reconfigure_stop() {
  local key pid
  say "reconfiguring from $1 to $NODES node(s)"
  cancel_jobs
  [[ -f $STATE/pids ]] || return 0
  while read -r key pid; do
    case $key in slurmd | slurmd:* | slurmctld) stop_pid "${key%%:*}" "$pid" "$key" ;; esac
  done < <(tac "$STATE/pids")
  awk '$1 != "slurmctld" && $1 != "slurmd" && $1 !~ /^slurmd:/' "$STATE/pids" >"$STATE/pids.new"
  mv "$STATE/pids.new" "$STATE/pids"
}

cmd_start() {
  if ((EUID != 0)); then
    ((NODES == 1)) || die_ns "must run as root (ip netns add, unshare --uts)"
    die "must run as root (it installs packages and starts daemons)"
  fi
  mkdir -p "$STATE" "$LOGDIR"
  exec 9>"$STATE/lock"
  flock -w 300 9 || die "another slurm-local.sh holds $STATE/lock"
  if ! getent hosts "$(host)" >/dev/null; then
    echo "127.0.0.1 $(host)" >>/etc/hosts
    say "added '127.0.0.1 $(host)' to /etc/hosts"
  fi
  install_packages
  local from
  from=$(recorded_nodes)
  # The namespaces first: where they cannot be made, a running cluster is left as it is.
  if ((NODES > 1)); then net_up; fi
  if ((from != NODES)) && slurm_running; then reconfigure_stop "$from"; fi
  if ((NODES == 1)); then net_down; fi
  write_configs
  write_cluster_env
  start_munged
  start_mariadb
  start_slurm_daemon slurmdbd sacctmgr -n list cluster
  start_slurm_daemon slurmctld scontrol ping
  if ((NODES == 1)); then start_slurm_daemon slurmd; else start_node_slurmds; fi
  wait_idle
  ((STARTED)) || say "already up"
  say "cluster up in $(elapsed)s: $(sinfo -h -o '%P %a %D %T %C' | tr '\n' ';')"
}

cmd_stop() {
  ((EUID == 0)) || die "must run as root"
  [[ -d $STATE ]] || { net_down; say "nothing to stop"; return 0; }
  exec 9>"$STATE/lock"
  flock -w 300 9 || die "another slurm-local.sh holds $STATE/lock"
  if [[ ! -s $STATE/pids ]]; then
    net_down
    rm -f "$STATE/cluster.env"
    say "nothing to stop"
    return 0
  fi
  cancel_jobs
  local key pid
  while read -r key pid; do
    stop_pid "${key%%:*}" "$pid" "$key"
  done < <(tac "$STATE/pids")
  rm -f "$STATE/pids"
  net_down
  rm -f "$STATE/cluster.env"
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
    local key pid st
    while read -r key pid; do
      if pid_alive "$pid" "${key%%:*}"; then st=running; else st=stopped; fi
      printf '  %-16s pid %-8s %s\n' "$key" "$pid" "$st"
    done <"$STATE/pids"
  fi
  if [[ -s $STATE/cluster.env ]]; then sed 's/^/  /' "$STATE/cluster.env"; fi
}

usage() {
  echo "usage: $ME start [--nodes N] | stop | status   (N: 1..$MAX_NODES, default 1)" >&2
  exit 2
}

ACTION=${1:-}
(($# == 0)) || shift
while (($#)); do
  case $1 in
    --nodes) (($# >= 2)) || usage; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    *) usage ;;
  esac
done
[[ $NODES =~ ^[1-9]$ ]] && ((NODES <= MAX_NODES)) || usage
[[ $ACTION == start || $NODES == 1 ]] || usage
if ((NODES == 1)); then CPUS=${CFH_SLURM_CPUS:-4}; else CPUS=${CFH_SLURM_CPUS:-2}; fi
GPUS=${CFH_SLURM_GPUS:-2}

case $ACTION in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
