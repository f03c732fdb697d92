#!/bin/bash
# A SLURM "cluster of one" on localhost for the tests: munged + slurmctld + slurmd with a fresh
# generated config in $SLURM_TEST_DIR (clients: export SLURM_CONF=$SLURM_TEST_DIR/slurm.conf).
# Installs Debian's packages when missing (root or passwordless sudo). Exit 77: SLURM cannot be
# installed or run here (the tests skip with the message); any other failure is an error.
# Env: SLURM_TEST_DIR (required), SLURM_TEST_PORTS="ctld_port slurmd_port" (default 6817 6818).
# `up.sh --install` only installs the packages (.ci/run).
set -euo pipefail
skip() { echo "SKIP: $*" >&2; exit 77; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  sudo -n true 2>/dev/null || skip "not root and no passwordless sudo: cannot start slurmd/munged"
  SUDO="sudo -n"
fi
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
if ! (have slurmctld && have slurmd && have munged && have sbatch); then
  command -v apt-get >/dev/null || skip "SLURM not installed and no apt-get to install it"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || skip "apt-get install slurmctld slurmd slurm-client munge failed (offline?)"
fi
export PATH="$PATH:/usr/sbin"
[ "${1:-}" = --install ] && exit 0
S=${SLURM_TEST_DIR:?set SLURM_TEST_DIR to a fresh directory}
read -r CTLD_PORT SLURMD_PORT <<<"${SLURM_TEST_PORTS:-6817 6818}"

# munge refuses to run as root: it runs as the munge user, with its socket dir owned by munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { $SUDO mungekey --create; $SUDO chown munge:munge /etc/munge/munge.key; \
                                   $SUDO chmod 0400 /etc/munge/munge.key; }
  $SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge && $SUDO chmod 0755 /run/munge
  $SUDO runuser -u munge -- munged
  touch "$S/munged.ours"  # slurm/down.sh stops it again
fi

mkdir -p "$S"/state "$S"/spool "$S"/log
# no cgroups in containers: linuxproc tracking, no task plugin; cred_expire=10 shortens the wait
# before a requeued job may start again (default 120 s); batch_sched_delay=0 starts jobs at once
cat > "$S/slurm.conf" <<CONF
ClusterName=beitds
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$S/slurm.conf"
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -f "$SLURM_CONF"   # daemonizes; pid in $S/slurmctld.pid
$SUDO env SLURM_CONF="$SLURM_CONF" slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 1 150); do
  if [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = idle ]; then
    echo "slurm up: $(sinfo -h -o '%P %a %D %T')"; exit 0
  fi
  sleep 0.2
done
echo "slurm did not come up" >&2; tail -n 20 "$S"/log/*.log >&2; exit 1
