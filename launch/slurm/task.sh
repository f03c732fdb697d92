#!/bin/bash
# What each srun task runs: SLURM's description of the task becomes torch.distributed's
# environment (DeepSpeed reads RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, not
# SLURM's variables), then the command replaces this shell, so signals reach it directly.
#
#   srun bash launch/slurm/task.sh python launch/pretrain.py --config ... [key=value ...]
set -euo pipefail
export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"
# the first host of the allocation hosts the rendezvous; the port follows the job id, so jobs
# sharing a node do not collide and a requeued job (same id) finds the same one
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="$(( ${BEIT_DS_PORT_BASE:-20000} + SLURM_JOB_ID % 20000 ))"
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"  # not every core per rank
exec "$@"
