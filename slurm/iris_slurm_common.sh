# Shared by the sbatch scripts: rendezvous, pre-emption and requeue. Sourced
# by a script that has set IRIS_HOME (see train_1node_2gpu.sbatch).
#
# iris-train reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID itself and
# binds rank r to its own GPU when the config says train.device: cuda
# (cuda:SLURM_LOCALID); nothing here touches the device, so a user's
# --set train.device=cpu is passed through untouched.
# shellcheck source=iris_programs.sh
source "$IRIS_HOME/slurm/iris_programs.sh"
iris_program iris-train
IRIS_TRAIN=("${IRIS_CMD[@]}")
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-8}}
# Fewer out-of-memory stops from fragmentation, unless the user chose otherwise.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
IRIS_PREEMPTED=124  # iris-train's exit code after a checkpoint on SIGTERM/SIGUSR1

iris_run_training() {
  local config=$1; shift
  local resume=()
  # A requeued job continues from its newest intact checkpoint.
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume=(--resume=auto); fi
  # SLURM signals the batch shell (B:USR1); pass it on to every rank, which
  # checkpoints at the end of its current iteration and exits with 124.
  trap 'echo "iris: pre-emption signal: asking ranks to checkpoint"; kill -USR1 "$srun_pid" 2>/dev/null || true' USR1 TERM
  srun --kill-on-bad-exit=0 "${IRIS_TRAIN[@]}" "$config" "$@" "${resume[@]}" &
  srun_pid=$!
  local rc=0
  wait "$srun_pid" || rc=$?
  # wait returns early when the trap fires: wait again for the real exit.
  while kill -0 "$srun_pid" 2>/dev/null; do rc=0; wait "$srun_pid" || rc=$?; done
  if [ "$rc" -eq "$IRIS_PREEMPTED" ]; then
    echo "iris: checkpoint written; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  exit "$rc"
}
