#!/usr/bin/env bash
# A real single-node SLURM cluster on this Debian machine (slurm-wlm 22.05), to run profiles/slurm
# for real: tests/test_slurm_cluster.py uses it and .ci/run starts it. Needs root; no systemd.
#
#   scripts/slurm-cluster.sh start [--no-accounting]   install the packages if missing, start the daemons
#   scripts/slurm-cluster.sh stop                      cancel its jobs, stop the daemons it started (by PID)
#   scripts/slurm-cluster.sh status                    sinfo, or exit 1 when it is not running
#
# It writes /etc/slurm/slurm.conf and slurmdbd.conf (SLURM's default paths: job steps that
# Snakemake's jobstep starts with srun drop SLURM_* variables such as SLURM_CONF) and refuses to
# replace ones it did not write; stop removes them. Everything else lives in $PQV_SLURM_DIR
# (default /tmp/pqv-slurm): state, logs, the accounting database, one PID file per daemon it started.
# One node, named after this host, with every core (`nproc`) and 90 % of the memory; partition
# `pqv` (the default, no time limit) and `short` (a 1-minute limit), account `root`.
# EnforcePartLimits=ALL: a job larger than the node fails at submission instead of pending forever. With accounting (default) slurmdbd keeps job records in MariaDB so
# `sacct` works, which is how Snakemake's SLURM plugin sees jobs end; --no-accounting starts no
# database, and Snakemake then needs `--slurm-status-command squeue`.
set -euo pipefail

DIR=${PQV_SLURM_DIR:-/tmp/pqv-slurm}
CLUSTER=pqv
PARTITION=pqv
SHORT=short  # the same node with a 1-minute time limit: jobs that span time limits are tested on it
DB_PORT=${PQV_SLURM_DB_PORT:-3307}
PACKAGES="slurm-wlm munge slurmdbd mariadb-server"
ETC=/etc/slurm
MARK="# written by scripts/slurm-cluster.sh"

say() { echo "slurm-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

# PID files of the daemons this script started, in start order (stop goes in reverse).
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"

alive() {  # alive NAME: the recorded PID runs and is still that program (PIDs get reused)
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1"* ]]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "$what did not come up within ${limit}s (logs: $DIR/*.log)"
}

launch() {  # launch NAME COMMAND...: start a foreground daemon in the background, record its PID
    local name=$1
    shift
    "$@" >>"$DIR/$name.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$DIR/$name.pid"
    for _ in $(seq 20); do  # setpriv execs munged: the PID gets the daemon's name a moment later
        alive "$name" && return
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    die "$name did not start: $(tail -n 5 "$DIR/$name.log")"
}

install_packages() {
    local missing=""
    for cmd in slurmctld slurmd slurmdbd munged mariadbd sbatch; do
        command -v "$cmd" >/dev/null || missing=1
    done
    [[ -z "$missing" ]] && return
    command -v apt-get >/dev/null || die "not a Debian machine: install $PACKAGES by hand"
    say "installing $PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # without systemd the packages' own services stay down; this script starts its own daemons
    apt-get install -y -qq $PACKAGES >"$DIR/apt.log" 2>&1 \
        || die "apt-get install failed: $(tail -n 5 "$DIR/apt.log")"
}

write_configs() {
    local host cpus mem_mb accounting
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    if [[ "$1" == yes ]]; then
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
    else
        accounting="AccountingStorageType=accounting_storage/none"
    fi
    mkdir -p "$DIR/state" "$DIR/spool" "$ETC"
    for f in slurm.conf slurmdbd.conf; do
        if [[ -e "$ETC/$f" ]] && ! grep -qx "$MARK" "$ETC/$f"; then
            die "$ETC/$f exists and was not written by this script: not replacing it"
        fi
    done
    cat >"$ETC/slurm.conf" <<EOF
$MARK
# one node ($cpus CPUs, $mem_mb MB), one partition; state and logs in $DIR
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
$accounting
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=$SHORT Nodes=$host MaxTime=1 State=UP
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/slurmdbd.daemon.pid
LogFile=$DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=pqv
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already runs; using it"
        return
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || setpriv --reuid=munge --regid=munge --clear-groups mungekey --create
    launch munged setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged --foreground
    wait_for 10 munged sh -c 'munge -n | unmunge'
}

start_database() {
    local db=(mariadb --no-defaults --socket="$DIR/mysql.sock" -u root)
    if [[ ! -d "$DIR/mysql/mysql" ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed: $(tail -n 5 "$DIR/mariadb-install.log")"
    fi
    launch mariadbd mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/mariadbd.daemon.pid" \
        --innodb-buffer-pool-size=64M --skip-log-bin
    wait_for 30 mariadbd mariadb-admin --no-defaults --socket="$DIR/mysql.sock" -u root ping
    "${db[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'pqv';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'pqv';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    launch slurmdbd slurmdbd -D
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start() {
    local accounting=yes
    [[ "${1:-}" == --no-accounting ]] && accounting=no
    [[ $(id -u) == 0 ]] || die "needs root (it installs packages and starts daemons)"
    mkdir -p "$DIR"
    if alive slurmctld; then
        say "already running"
        return
    fi
    install_packages
    trap '[[ $? == 0 ]] || { say "start failed; stopping what it started"; stop; }' EXIT
    write_configs "$accounting"
    start_munge
    if [[ "$accounting" == yes ]]; then start_database; fi
    launch slurmctld slurmctld -D
    wait_for 30 slurmctld scontrol ping
    launch slurmd slurmd -D
    wait_for 60 "node $(hostname -s)" sh -c "sinfo -h -N -o %T | grep -qx idle"
    trap - EXIT
    say "running: partitions $PARTITION and $SHORT (1-minute limit), account root, $(sinfo -h -N -o '%c CPUs, %m MB'); accounting: $accounting"
}

stop() {
    local name pid
    if alive slurmctld; then  # jobs first: their processes would outlive slurmd
        scancel --full --quiet --state=PENDING,RUNNING --user=root 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
    for name in $(echo $DAEMONS | tr ' ' '\n' | tac); do
        alive "$name" || { rm -f "$DIR/$name.pid"; continue; }
        pid=$(cat "$DIR/$name.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        rm -f "$DIR/$name.pid"
        say "stopped $name (PID $pid)"
    done
    for f in slurm.conf slurmdbd.conf; do
        if grep -qsx "$MARK" "$ETC/$f"; then rm -f "$ETC/$f"; fi
    done
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) alive slurmctld && sinfo ;;
    *) echo "usage: $0 start [--no-accounting] | stop | status" >&2; exit 2 ;;
esac
