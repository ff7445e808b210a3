#pragma once
// Where a process runs: its rank among the job's processes (torchrun or srun)
// and the device it computes on. Training and inference bind devices the
// same way: "cuda" means this process's own GPU, cuda:LOCAL_RANK.
#include <string>

#include <c10/core/Device.h>

namespace iris {

struct DistributedEnv {
  int rank = 0, world_size = 1;
  int local_rank = 0;        // rank on this node
  int local_world_size = 1;  // ranks on this node
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE (torchrun) or SLURM_PROCID/
  // SLURM_NTASKS/SLURM_LOCALID/SLURM_NTASKS_PER_NODE (srun), plus
  // MASTER_ADDR/MASTER_PORT. iris::Error naming the variable when one is not
  // a number or out of range.
  static DistributedEnv from_environment();
};

// The device a process of `env` uses when asked for `requested` (the value of
// the flag or config key `where`): "cpu"; "cuda" = cuda:local_rank; "cuda:N"
// only when this node runs one rank (otherwise every rank would share GPU N:
// refused, naming `where`). `cuda_devices` is the number of visible GPUs (0
// without CUDA); a GPU that does not exist is an error naming `where`.
c10::Device resolve_device(const std::string& requested, const DistributedEnv& env, int cuda_devices,
                           const std::string& where);

// The number of GPUs this process sees (0 in builds without CUDA).
int visible_cuda_devices();

// LibTorch's intra-op CPU threads: `requested` > 0, else $IRIS_THREADS, else
// every core (LibTorch on Debian would otherwise use one).
void configure_threads(int requested = 0);

// Peak resident memory of this process (VmHWM), bytes; 0 where unknown.
long long peak_rss_bytes();

}  // namespace iris
