# The body the sbatch scripts share (sourced): `run_tasks SCRIPT [ARGS...]` starts one task per
# GPU with srun, each through task.sh, and waits. A preemption warning (SIGUSR1, from
# `#SBATCH --signal=B:USR1@<seconds>`) is forwarded to the tasks: they checkpoint at the next
# optimizer step and exit with status 75 (beit_ds.engine.preemption.EXIT_CODE), and the job
# requeues itself; the requeued run resumes from that checkpoint (--resume auto, the default).
# After `scancel` (SIGTERM to the batch script) the tasks still checkpoint but nothing requeues.

PREEMPTED_EXIT=75
cd "${BEIT_DS_ROOT:-$SLURM_SUBMIT_DIR}"  # the checkout: submit from it or set BEIT_DS_ROOT

run_tasks() {
  local status=0 cancelled=0 srun_pid
  echo "$(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST"
  trap 'echo "$(date +%T) SIGUSR1: the tasks checkpoint and stop"; kill -USR1 "$srun_pid" 2>/dev/null || true' USR1
  trap 'cancelled=1' TERM
  srun bash launch/slurm/task.sh "${BEIT_DS_PYTHON:-python}" "$@" &
  srun_pid=$!
  while :; do  # `wait` also returns when a trap ran: wait again until srun itself has ended
    wait "$srun_pid" && status=0 || status=$?
    kill -0 "$srun_pid" 2>/dev/null || break
  done
  if [ "$status" = "$PREEMPTED_EXIT" ] && [ "$cancelled" = 0 ]; then
    echo "$(date +%T) checkpoint saved: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  return "$status"
}
