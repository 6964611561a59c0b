#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying hydra/launcher=slurm and for the tests
# marked `slurm` (docs/guides/slurm.md).
#
#   bash scripts/slurm_local.sh start    # install (Debian's slurm-wlm, munge) if missing, start
#   bash scripts/slurm_local.sh status   # sinfo
#   bash scripts/slurm_local.sh stop     # end munged, slurmctld and slurmd
#
# Needs root (apt-get, daemons in /run and /var/spool). The node gets this machine's CPUs and
# memory as `slurmd -C` reports them; no accounting (sacct answers nothing), processes tracked
# without cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), so it runs in a
# container too. An existing /etc/slurm/slurm.conf that this script did not write is left alone.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurm-local
LOGS=/var/log/slurm-local
RUN=/run/slurm-local
MARK="# written by llm_scratch scripts/slurm_local.sh"

die() {
    echo "error: $*" >&2
    exit 2
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root: run as root"
    command -v apt-get >/dev/null || die "no apt-get here: install SLURM (slurm-wlm) and munge yourself"
    echo "Installing slurm-wlm and munge (Debian packages)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; it is left as it is (a cluster is configured here already: use it, or move that file away)"
    fi
    local node host
    # this machine as slurmd sees it: CPUs, sockets, cores, threads, memory (MB)
    node=$(slurmd -C | head -n 1)
    host=$(hostname -s)
    mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN"
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits this long before it starts again (SLURM's default: 120 s)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
# a short scheduling pass: a requeued job starts seconds after it may
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# finished jobs stay visible to squeue/scontrol for 5 minutes (there is no sacct)
MinJobAge=300
KillWait=30
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

# whether the pid file names a running process of that program (a pid left by a machine that
# stopped may since belong to another process)
pid_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

start_munge() {
    local pidfile=/run/munge/munged.pid
    if pid_alive "$pidfile" munged; then return; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file="$pidfile"
    for _ in $(seq 50); do
        munge -n </dev/null >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged did not start (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }

start() {
    install_packages
    if pid_alive "$RUN/slurmctld.pid" slurmctld && pid_alive "$RUN/slurmd.pid" slurmd && [ "$(node_state)" = idle ]; then
        echo "The local SLURM cluster is running already:"
        sinfo
        return
    fi
    [ "$(id -u)" = 0 ] || die "starting the local cluster needs root"
    write_config
    start_munge
    pid_alive "$RUN/slurmctld.pid" slurmctld || slurmctld -c  # -c: no jobs left over from an earlier start
    pid_alive "$RUN/slurmd.pid" slurmd || slurmd
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case "$state" in
            idle | mix | alloc) break ;;
            drain* | down* | drng*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case "$state" in
        idle | mix | alloc) ;;
        *) die "the node did not become idle (state: ${state:-none}); see $LOGS/slurmctld.log and $LOGS/slurmd.log" ;;
    esac
    echo "The local SLURM cluster is up:"
    sinfo
}

stop_pid() {
    local pidfile=$1 pid
    pid_alive "$pidfile" "$2" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    # the jobs left on this cluster only (never on a cluster this script did not configure)
    if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && pid_alive "$RUN/slurmctld.pid" slurmctld; then
        scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid /run/munge/munged.pid munged
    echo "The local SLURM cluster is stopped."
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) die "usage: bash scripts/slurm_local.sh start|stop|status" ;;
esac
