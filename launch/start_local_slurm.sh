#!/usr/bin/env bash
# Start a single-node Slurm cluster on this host:
#   munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd
# Idempotent: a daemon whose pid file points at a live process is left alone.
# All state, logs, sockets, the munge key and the accounting DB live under
# $SLURM_BASE; nothing in /etc is changed (apt installs packages if missing).
# Clients need SLURM_CONF:   source "$SLURM_BASE/env.sh"
# SLURM_ACCOUNTING=1 (default) runs slurmdbd+MariaDB so that `sacct` works;
# submitit polls sacct and, without it, waits forever on a job that died
# without writing its result (OOM kill, scancel, timeout, os._exit).
# SLURM_ACCOUNTING=0: no DB, sacct says "accounting storage is disabled".
# Stop with stop_local_slurm.sh.  Tested: Debian 12, root, no systemd, no
# cgroups; slurm-wlm 22.05.8, munge 0.5.15, MariaDB 10.11.
set -euo pipefail

BASE=${SLURM_BASE:-/tmp/local-slurm}
NODE=${SLURM_NODE:-$(hostname -s)}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_DBD_PORT:-6819}
DB_PORT=${SLURM_DB_PORT:-13306}
# seconds between SIGTERM and SIGKILL when a job is cancelled (scancel, time limit)
KILL_WAIT=${SLURM_KILL_WAIT:-10}
CPUS=${SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}  # nproc obeys OMP_NUM_THREADS; the node has them all
# advertise ~85% of physical memory (a node claiming more than it has is drained)
MEM_MB=${SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2/1024*0.85}' /proc/meminfo)}
RUN=$BASE/run LOG=$BASE/log

log() { echo "[start_local_slurm] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
die() { echo "[start_local_slurm] ERROR: $*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS command... : retry every 0.2 s until it succeeds or time is up
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.2; done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 1. packages (only those missing)
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ "$ACCOUNTING" = 1 ]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. directories (munged refuses group/world-writable dirs)
mkdir -p "$BASE"/{etc,run,log,state,spool,munge}
chmod 755 "$BASE" "$BASE"/{etc,run,log,state,spool}
chmod 700 "$BASE/munge"

# 3. munge key (our own, not /etc/munge/munge.key)
KEY=$BASE/munge/munge.key
if [ ! -s "$KEY" ]; then
  dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
  chmod 400 "$KEY"
  log "created munge key $KEY"
fi

# 4. config files
CONF=$BASE/etc/slurm.conf
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections this names the munge socket (else /run/munge/munge.socket.2)
AccountingStoragePass=$RUN/munge.socket.2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$CONF.new" <<EOF
ClusterName=localcluster
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$RUN/munge.socket.2
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd
ProctrackType=${SLURM_PROCTRACK:-proctrack/pgid}
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
SlurmdTimeout=300
InactiveLimit=0
KillWait=$KILL_WAIT
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
mv "$CONF.new" "$CONF"
echo "export SLURM_CONF=$CONF" > "$BASE/env.sh"
export SLURM_CONF=$CONF

# 5. munged
if alive "$RUN/munged.pid"; then
  log "munged already running (pid $(cat "$RUN/munged.pid"))"
else
  rm -f "$RUN/munge.socket.2" "$RUN/munge.socket.2.lock"
  munged --force --socket="$RUN/munge.socket.2" --key-file="$KEY" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$BASE/munge/munged.seed"
  wait_for 10 test -S "$RUN/munge.socket.2" || die "munged failed; see $LOG/munged.log"
  log "munged started (pid $(cat "$RUN/munged.pid"))"
fi
munge -n --socket="$RUN/munge.socket.2" | unmunge --socket="$RUN/munge.socket.2" >/dev/null \
  || die "munge self-test failed; see $LOG/munged.log"

# 6. accounting: MariaDB (TCP 127.0.0.1:$DB_PORT, own datadir) + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  DB=$BASE/mysql SOCK=$RUN/mysqld.sock
  DBPASS_FILE=$BASE/munge/dbpass
  [ -s "$DBPASS_FILE" ] || { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DBPASS_FILE"; chmod 600 "$DBPASS_FILE"; }
  DBPASS=$(cat "$DBPASS_FILE")
  if alive "$RUN/mariadbd.pid"; then
    log "mariadbd already running (pid $(cat "$RUN/mariadbd.pid"))"
  else
    if [ ! -d "$DB/mysql" ]; then
      mkdir -p "$DB"
      mariadb-install-db --no-defaults --user=root --datadir="$DB" \
        --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed; see $LOG/mariadb-install.log"
    fi
    nohup mariadbd --no-defaults --user=root --datadir="$DB" --socket="$SOCK" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
      --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.err" \
      --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
      --innodb-lock-wait-timeout=900 --max-allowed-packet=16M </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb --no-defaults -uroot --socket="$SOCK" -e 'select 1' \
      && alive "$RUN/mariadbd.pid" || die "mariadbd failed; see $LOG/mariadb.err"
    log "mariadbd started (pid $(cat "$RUN/mariadbd.pid"))"
  fi
  mariadb --no-defaults -uroot --socket="$SOCK" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "DB user setup failed"

  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; must be 0600
  DBDCONF=$BASE/etc/slurmdbd.conf
  ( umask 077; cat > "$DBDCONF" <<EOF
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket.2
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
EOF
  )
  if alive "$RUN/slurmdbd.pid"; then
    log "slurmdbd already running (pid $(cat "$RUN/slurmdbd.pid"))"
  else
    slurmdbd
    wait_for 60 port_open "$DBD_PORT" && alive "$RUN/slurmdbd.pid" \
      || die "slurmdbd failed; see $LOG/slurmdbd.log"
    log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
  fi
  clusters=$(timeout 30 sacctmgr -n -P show cluster format=cluster) || die "sacctmgr cannot reach slurmdbd"
  grep -qx localcluster <<<"$clusters" || timeout 30 sacctmgr -i add cluster localcluster >/dev/null
fi

# 7. slurmctld (daemonizes itself, writes its pid file)
if alive "$RUN/slurmctld.pid"; then
  log "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
else
  slurmctld -f "$CONF"
  wait_for 60 scontrol ping && alive "$RUN/slurmctld.pid" || die "slurmctld failed; see $LOG/slurmctld.log"
  log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
fi

# 8. slurmd
if alive "$RUN/slurmd.pid"; then
  log "slurmd already running (pid $(cat "$RUN/slurmd.pid"))"
else
  mkdir -p "$BASE/spool/$NODE"
  slurmd -f "$CONF" -N "$NODE"
  wait_for 30 alive "$RUN/slurmd.pid" || die "slurmd failed; see $LOG/slurmd.log"
  log "slurmd started (pid $(cat "$RUN/slurmd.pid"))"
fi

# 9. wait until the node takes jobs; resume it if an earlier run left it down
state= end=$((SECONDS + 60))
while [ $SECONDS -lt $end ]; do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true; sleep 1 ;;
  esac
  sleep 0.2
done
case "$state" in idle*|mixed*|allocated*|completing*) ;; *) die "node $NODE is '${state:-unknown}'; see $LOG/";; esac
sinfo
log "ready (partition $PARTITION, accounting=$ACCOUNTING): source $BASE/env.sh"
