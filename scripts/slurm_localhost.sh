#!/usr/bin/env bash
# A real one-node SLURM (with accounting) on localhost, for tests and trying --plugin SLURM and
# --batch-worker slurm without a cluster.
#
#   scripts/slurm_localhost.sh start [DIR]   install if missing, write configs under DIR (default:
#                                            a new temporary dir), start munged, MariaDB, slurmdbd,
#                                            slurmctld and slurmd, wait for the node to be idle, and
#                                            print the line to eval:  export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_localhost.sh stop [DIR]    stop those daemons (by their PID files) and remove DIR
#                                            (default DIR: the folder of $SLURM_CONF)
#   scripts/slurm_localhost.sh status [DIR]  sinfo of that cluster
#
# Needs root and apt (Debian packages slurm-wlm, munge, slurmdbd, mariadb-server). Daemons are
# started by hand, not as services: nothing here needs systemd or cgroups. Everything a cluster
# usually keeps under /etc, /run and /var (munge key and socket, ports, state, spool, logs, the
# database) lives in DIR, on free ports, so it does not clash with another such cluster on the
# same machine. Exit status: 0 started/stopped, 3 cannot start here (reason on stderr).
# The measurements behind these settings are in the shared NOTES ("A real SLURM on localhost").
set -euo pipefail

cmd="${1:-}"
starting=""
die() {
    echo "slurm_localhost: $*" >&2
    # A failed start stops what it started; the folder stays, for its logs.
    [[ -n "$starting" ]] && stop_daemons "$starting"
    exit 3
}
log() { echo "slurm_localhost: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pid() {  # stop_pid PIDFILE: TERM, then KILL after 10 s
    local file="$1" pid
    [[ -s "$file" ]] || return 0
    pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_daemons() {  # stop_daemons DIR: jobs first (their slurmstepd), then the daemons, last started first
    local dir="$1" name
    [[ -f "$dir/slurm.conf" ]] && command -v scancel >/dev/null \
        && SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1 || true
    for name in run/slurmd.pid run/slurmctld.pid run/slurmdbd.pid mysql/mysqld.pid munge/munged.pid; do
        stop_pid "$dir/$name"
    done
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null || missing+=(mariadb-server)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "no apt-get to install ${missing[*]}"
    log "installing ${missing[*]} (apt-get)"
    # apt's policy-rc.d keeps the services from starting: this script starts them by hand.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/slurm_localhost_apt.log" 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
             --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/slurm_localhost_apt.log" 2>&1; } \
        || die "apt-get install ${missing[*]} failed (see ${TMPDIR:-/tmp}/slurm_localhost_apt.log)"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds="$1" what="$2"; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up in ${seconds} s (logs in ${dir})"
}

start() {
    [[ "$(id -u)" -eq 0 ]] || die "needs root (to install packages and run slurmd)"
    install_packages
    dir="${1:-$(mktemp -d "${TMPDIR:-/tmp}/slurm_localhost.XXXXXX")}"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    starting="$dir"
    chmod 755 "$dir"   # munge and mysql users must reach their folders inside it
    runuser -u munge -- test -x "$dir" || die "$dir: not reachable by the munge user (a parent folder is private)"
    mkdir -p "$dir"/{state,spool,log,run} "$dir/munge" "$dir/mysql"
    local ctld_port slurmd_port dbd_port db_port mem cpus pass
    ctld_port="$(free_port)"; slurmd_port="$(free_port)"; dbd_port="$(free_port)"; db_port="$(free_port)"
    cpus="$(nproc)"
    mem="$(free -m | awk '/^Mem:/ {print int($4 * 0.9)}')"
    pass="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

    # munge: its own key and socket in DIR.
    chown munge:munge "$dir/munge"; chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
    chown munge:munge "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"
    local socket="$dir/munge/munge.socket"
    runuser -u munge -- munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    wait_for 10 munged munge --socket="$socket" -n

    # MariaDB for slurmdbd (pydra's slurm worker reads job states with sacct): TCP on 127.0.0.1.
    local mysqld; mysqld="$(command -v mariadbd || command -v mysqld)"
    chown mysql:mysql "$dir/mysql"
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/mysql/data" --skip-test-db \
        >"$dir/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $dir/log/mariadb-install.log)"
    setsid -f "$mysqld" --no-defaults --user=mysql --datadir="$dir/mysql/data" --socket="$dir/mysql/mysqld.sock" \
        --port="$db_port" --bind-address=127.0.0.1 --pid-file="$dir/mysql/mysqld.pid" \
        --log-error="$dir/log/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1
    wait_for 30 MariaDB mariadb --no-defaults --socket="$dir/mysql/mysqld.sock" -uroot -e "select 1"
    mariadb --no-defaults --socket="$dir/mysql/mysqld.sock" -uroot -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '${pass}';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

    cat >"$dir/slurm.conf" <<EOF
ClusterName=sqlocal
SlurmctldHost=localhost
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${socket}
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
# The munge socket for slurmdbd connections (AuthInfo does not cover them; slurm.conf(5)).
AccountingStorageHost=localhost
AccountingStoragePort=${dbd_port}
AccountingStoragePass=${socket}
JobCompType=jobcomp/none
MinJobAge=300
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool/slurmd-%n
SlurmctldPidFile=${dir}/run/slurmctld.pid
SlurmdPidFile=${dir}/run/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd.conf sits beside slurm.conf (slurmdbd finds it through SLURM_CONF) and must be 600.
    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=${socket}
DbdHost=localhost
DbdPort=${dbd_port}
SlurmUser=root
PidFile=${dir}/run/slurmdbd.pid
LogFile=${dir}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${db_port}
StorageUser=slurm
StoragePass=${pass}
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"
    export SLURM_CONF="$dir/slurm.conf"

    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    # The cluster is registered before slurmctld starts (else sacct finds no job: NOTES).
    sacctmgr -i add cluster sqlocal >/dev/null
    slurmctld
    wait_for 30 slurmctld scontrol ping
    slurmd -N localhost
    idle() { sinfo -h -n localhost -o %t | grep -qx idle; }
    wait_for 60 "the node (idle in sinfo)" idle
    starting=""
    log "up: $(sinfo -h -o '%P %D %t %c CPUs' | head -1); logs in ${dir}/log"
    echo "export SLURM_CONF=${dir}/slurm.conf"
}

stop() {
    dir="${1:-}"
    if [[ -z "$dir" && -n "${SLURM_CONF:-}" ]]; then dir="$(dirname "$SLURM_CONF")"; fi
    [[ -n "$dir" && -f "$dir/slurm.conf" ]] || die "no cluster folder given (stop DIR, or SLURM_CONF set)"
    stop_daemons "$dir"
    rm -rf "$dir"
    log "stopped; removed ${dir}"
}

case "$cmd" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    status) shift; dir="${1:-$(dirname "${SLURM_CONF:?set SLURM_CONF or give DIR}")}"; SLURM_CONF="$dir/slurm.conf" sinfo ;;
    *) echo "usage: $0 start [DIR] | stop [DIR] | status [DIR]" >&2; exit 2 ;;
esac
