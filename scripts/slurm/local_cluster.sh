#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests and for trying the cluster profile: munged,
# slurmctld and slurmd on localhost, every file (config, key, state, logs) in one folder. Needs
# Debian's slurm-wlm and munge, and root (slurmd runs jobs as their owner).
#
#   scripts/slurm/local_cluster.sh start [FOLDER]
#   scripts/slurm/local_cluster.sh stop [FOLDER]    # cancels its jobs, stops its three daemons
#
# FOLDER defaults to /tmp/rrt-slurm. The cluster has one partition, "debug", with every core of
# this machine, and no accounting database (AccountingStorageType=accounting_storage/none): status
# checks go through squeue, and there are no accounts to check against. RRT_SLURM_CTLD_PORT and
# RRT_SLURM_D_PORT choose the daemons' ports (default 6817, 6818: SLURM's own).
#
# /etc/slurm/slurm.conf is a link to FOLDER/slurm.conf while the cluster runs (and only where no
# other SLURM is configured): Snakemake's SLURM jobs run their step through srun with every
# SLURM_* variable but a few removed, SLURM_CONF included, so srun finds the cluster only there.
# `stop` removes the link: with a configuration and no controller, every SLURM command (and so
# every Snakemake start, whose SLURM plugin asks `scontrol show config`) waits 9 s for it.
set -euo pipefail

command=${1:-}
state=$(realpath -m "${2:-/tmp/rrt-slurm}")
conf=$state/slurm.conf
system_conf=/etc/slurm/slurm.conf
export SLURM_CONF=$conf

need() {
    local missing=()
    for tool in munged mungekey slurmctld slurmd sbatch squeue sinfo scancel; do
        command -v "$tool" > /dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "local_cluster.sh: missing ${missing[*]}: apt-get install slurm-wlm munge" >&2
        exit 3
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "local_cluster.sh: slurmd must run as root" >&2
        exit 3
    fi
    if [ -e "$system_conf" ] && [ ! -L "$system_conf" ]; then
        echo "local_cluster.sh: a SLURM is configured here already ($system_conf)" >&2
        exit 3
    fi
}

stop_pid() {  # the daemon whose pid file is $1, if it runs: TERM, then KILL after 10 s
    [ -s "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2> /dev/null || { rm -f "$1"; return 0; }
    for _ in $(seq 100); do
        kill -0 "$pid" 2> /dev/null || { rm -f "$1"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
    rm -f "$1"
}

write_conf() {
    local cpus memory
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat > "$conf" <<CONF
# Written by scripts/slurm/local_cluster.sh: a one-node cluster on localhost.
ClusterName=rrt-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${RRT_SLURM_CTLD_PORT:-6817}
SlurmdPort=${RRT_SLURM_D_PORT:-6818}
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$state/slurmctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    need
    stop
    mkdir -p "$state/munge" "$state/slurmctld" "$state/slurmd"
    chmod 700 "$state/munge"
    [ -s "$state/munge/munge.key" ] || mungekey --create --keyfile "$state/munge/munge.key"
    chmod 600 "$state/munge/munge.key"
    munged --force --socket "$state/munge/munge.socket" --key-file "$state/munge/munge.key" \
        --pid-file "$state/munge/munged.pid" --log-file "$state/munge/munged.log" \
        --seed-file "$state/munge/munged.seed"
    write_conf
    mkdir -p "$(dirname "$system_conf")"
    ln -sfn "$conf" "$system_conf"
    slurmctld -c    # a fresh controller: no jobs of an earlier start
    slurmd -N localhost
    for _ in $(seq 300); do
        if [ "$(sinfo -h -n localhost -o %T 2> /dev/null)" = idle ]; then
            echo "SLURM is up: partition debug, $(nproc) CPUs; logs and state in $state"
            return 0
        fi
        sleep 0.1
    done
    echo "local_cluster.sh: the node did not become idle in 30 s; logs in $state" >&2
    sinfo -N -l >&2 || true
    exit 1
}

stop() {
    if [ -s "$state/slurmctld.pid" ] && kill -0 "$(cat "$state/slurmctld.pid")" 2> /dev/null; then
        scancel --full --quiet --partition debug 2> /dev/null || true
    fi
    stop_pid "$state/slurmd.pid"
    stop_pid "$state/slurmctld.pid"
    stop_pid "$state/munge/munged.pid"
    if [ -L "$system_conf" ] && [ "$(readlink "$system_conf")" = "$conf" ]; then
        rm -f "$system_conf"
    fi
}

case $command in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop [FOLDER]" >&2; exit 2 ;;
esac
