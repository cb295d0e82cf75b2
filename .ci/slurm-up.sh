#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests/test_slurm.py (the micro DAG through
# `snakemake --profile workflow/profiles/slurm`): Debian's slurm-wlm with slurmdbd on a local MariaDB, so
# that sacct works as snakemake-executor-plugin-slurm needs. Run as root, in a container without systemd:
# every daemon is started directly. Safe to run again: a cluster that already answers is only re-checked.
#
# The node: this host's CPUs (nproc), partitions named like the profile's placeholders ("cpu", the default,
# and "gpu"), so that workflow/profiles/slurm is tested unchanged. It advertises NODE_MEM_MB of memory and
# NODE_GPUS GPUs so that the profile's requests, sized for the paper presets (--mem 64000, --gpus=1), are
# accepted as written. The GPUs are character devices that are copies of /dev/null (1,3) under
# $FAKE_GPU_DIR: SLURM schedules them and binds nothing (task/none, no cgroups), and the jobs run on the
# CPU (torch sees no CUDA; `device: auto`). Nothing enforces memory either. SlurmdParameters=
# config_overrides keeps slurmd from draining a node that has less memory than it advertises.
#
# Exit status: 0 when `sbatch --wrap hostname` ran and sacct lists it; 1 with each daemon's log tail
# otherwise.
set -euo pipefail

CLUSTER=infdiff-ci
ACCOUNT=ci
NODE=$(hostname -s)
NODE_MEM_MB=${NODE_MEM_MB:-131072}
NODE_GPUS=${NODE_GPUS:-4}
FAKE_GPU_DIR=/var/lib/slurm-fake-gpu
DB_PASS=slurmdbd-ci    # a local database reachable only through this machine's socket
LOGDIR=/var/log/slurm

say() { echo "[slurm-up] $*"; }

diagnose() {
    say "FAILED: $*"
    for f in "$LOGDIR"/*.start.log /var/log/munge/munged.log /var/log/mysql/error.log "$LOGDIR"/slurmdbd.log \
             "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log; do
        [ -f "$f" ] && { echo "----- tail $f"; tail -n 25 "$f"; }
    done
    command -v sinfo >/dev/null && { echo "----- sinfo"; sinfo -N -l || true; }
    exit 1
}

wait_for() {  # wait_for <seconds> <what> <command...>
    local secs=$1 what=$2; shift 2
    for _ in $(seq "$secs"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    diagnose "$what not up after ${secs}s"
}

running() { pgrep -x "$1" >/dev/null; }

# start <name> <command...>: a daemon that keeps none of this script's descriptors (a daemon holding the
# caller's stdout would keep a `.ci/slurm-up.sh | tee` pipeline open); its startup output goes to
# $LOGDIR/<name>.start.log, its own log to the file its configuration names
start() {
    local name=$1; shift
    say "starting $name"
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] && eval "exec $fd>&-"
        done
        exec "$@" </dev/null >>"$LOGDIR/$name.start.log" 2>&1
    ) || diagnose "$name did not start"
}

[ "$(id -u)" = 0 ] || diagnose "needs root (it installs packages and starts daemons)"

# ---- packages ------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing slurm-wlm slurmdbd mariadb-server munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || diagnose "apt-get update"
    apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd mariadb-server munge \
        || diagnose "apt-get install slurm-wlm slurmdbd mariadb-server munge"
fi
say "$(slurmctld -V)"
install -d -o slurm -g slurm -m 0755 "$LOGDIR"

# ---- munge ---------------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! running munged; then
    start munged runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 munge sh -c 'munge -n | unmunge'

# ---- MariaDB with the accounting database -----------------------------------------------------------------
install -d -o mysql -g mysql -m 0755 /run/mysqld
install -d -o mysql -g adm -m 0750 /var/log/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null || diagnose "mariadb-install-db"
fi
if ! running mariadbd; then  # mariadbd stays in the foreground: started in the background, in its own session
    start mariadbd sh -c 'cd / && setsid /usr/sbin/mariadbd --user=mysql --log-error=/var/log/mysql/error.log &'
fi
wait_for 60 mariadb mariadb-admin ping
mariadb <<SQL || diagnose "creating slurm_acct_db"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---- configuration -------------------------------------------------------------------------------------
install -d -m 0755 /etc/slurm
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/spool/slurmd /run/slurm
install -d -m 0755 "$FAKE_GPU_DIR"
for i in $(seq 0 $((NODE_GPUS - 1))); do
    [ -c "$FAKE_GPU_DIR/gpu$i" ] || mknod -m 0666 "$FAKE_GPU_DIR/gpu$i" c 1 3 \
        || diagnose "mknod $FAKE_GPU_DIR/gpu$i (the node's stand-in GPU devices)"
done
# this host's CPU layout as slurmd sees it (NodeName=... CPUs=... SocketsPerBoard=... ThreadsPerCore=...)
HW=$(slurmd -C | head -1 | sed -e 's/ RealMemory=[0-9]*//') || diagnose "slurmd -C"

cat > /etc/slurm/slurmdbd.conf.new <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: processes are tracked by their parent pid, tasks are not bound or limited
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment    # sacct shows the plugin's --comment rule_<name>_wildcards_...
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=30
GresTypes=gpu
$HW RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

cat > /etc/slurm/gres.conf.new <<EOF
# stand-in GPUs: copies of /dev/null, schedulable and bound to nothing (this node has no GPU)
NodeName=$NODE Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((NODE_GPUS - 1))]
EOF

changed=0
for f in slurm.conf slurmdbd.conf gres.conf; do
    if ! cmp -s "/etc/slurm/$f.new" "/etc/slurm/$f"; then
        mv "/etc/slurm/$f.new" "/etc/slurm/$f"; changed=1
    else
        rm "/etc/slurm/$f.new"
    fi
done
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf
chmod 0644 /etc/slurm/slurm.conf /etc/slurm/gres.conf

if [ "$changed" = 1 ] && { running slurmctld || running slurmd || running slurmdbd; }; then
    say "configuration changed: restarting the SLURM daemons this script started"
    for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid; do
        [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for d in slurmd slurmctld slurmdbd; do
        for _ in $(seq 30); do running "$d" || break; sleep 1; done
    done
fi

# ---- daemons -------------------------------------------------------------------------------------------
running slurmdbd || start slurmdbd slurmdbd
wait_for 60 slurmdbd sacctmgr -n show cluster

# the cluster, an account and this user in the accounting database (before slurmctld registers)
sacctmgr -n show cluster format=cluster%40 | grep -qw "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null || diagnose "sacctmgr add cluster"
sacctmgr -n show account format=account%40 | grep -qw "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="CI" Organization="infdiff" >/dev/null \
    || diagnose "sacctmgr add account"
sacctmgr -n show user "$(id -un)" format=user%40 | grep -qw "$(id -un)" \
    || sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
    || diagnose "sacctmgr add user"

running slurmctld || start slurmctld slurmctld
wait_for 60 slurmctld scontrol ping
running slurmd || start slurmd slurmd
# waiting, a node left down or drained by an earlier run (e.g. a killed slurmd) is resumed
wait_for 60 "node $NODE idle" sh -c "scontrol update NodeName='$NODE' State=RESUME >/dev/null 2>&1;
    sinfo -h -n '$NODE' -o %T | grep -Eq '^(idle|mixed|allocated)$'"

# ---- smoke test: a job through sbatch, listed by sacct ---------------------------------------------------
jobid=$(sbatch --parsable --wait --output=/dev/null --wrap hostname) || diagnose "sbatch --wrap hostname"
wait_for 30 "job $jobid in sacct" sh -c "sacct -n -X -j '$jobid' -o State | grep -q COMPLETED"
say "ready: $(sinfo -h -o '%P %D %T %c CPUs %m MB %G' | tr '\n' ';') smoke job $jobid COMPLETED"
