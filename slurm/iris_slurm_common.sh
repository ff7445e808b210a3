# Shared by the sbatch scripts: rendezvous, pre-emption and requeue.
# iris-train reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID itself; it
# needs MASTER_ADDR and MASTER_PORT, and one GPU per rank (cuda:LOCALID).
IRIS_BIN=${IRIS_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
IRIS_PREEMPTED=124  # iris-train's exit code after a checkpoint on SIGTERM/SIGUSR1

iris_run_training() {
  local config=$1; shift
  local resume=()
  # A requeued job continues from its last checkpoint.
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume=(--resume); fi
  # SLURM signals the batch shell (B:USR1); pass it on to every rank, which
  # checkpoints at the end of its current iteration and exits with 124.
  trap 'echo "pre-emption signal: asking ranks to checkpoint"; kill -USR1 "$srun_pid" 2>/dev/null' USR1 TERM
  srun --kill-on-bad-exit=0 bash -c \
    'exec "$0" "$@" --set train.device=cuda:$SLURM_LOCALID' \
    "$IRIS_BIN/iris-train" "$config" "$@" "${resume[@]}" &
  srun_pid=$!
  local rc=0
  wait "$srun_pid" || rc=$?
  # wait returns early when the trap fires: wait again for the real exit.
  if kill -0 "$srun_pid" 2>/dev/null; then wait "$srun_pid" || rc=$?; fi
  if [ "$rc" -eq "$IRIS_PREEMPTED" ]; then
    echo "checkpoint written; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  exit "$rc"
}
