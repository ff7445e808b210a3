#pragma once
// The small distributed interface the engine needs (as Marian's communicator
// and Flashlight's fl/distributed): rank, size, broadcast, all-reduce. Gloo
// on CPU, NCCL on CUDA builds, both c10d process groups; a single process
// needs none of it.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris::train {

struct DistributedEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // From RANK/WORLD_SIZE/LOCAL_RANK (torchrun) or SLURM_PROCID/SLURM_NTASKS/
  // SLURM_LOCALID (srun), plus MASTER_ADDR/MASTER_PORT.
  static DistributedEnv from_environment();
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;
  // In place, from rank 0.
  virtual void broadcast(std::vector<at::Tensor>& tensors) = 0;
  // Starts a sum all-reduce of one tensor in place; the returned function waits for it.
  virtual std::function<void()> allreduce_sum_async(at::Tensor& tensor) = 0;
  void allreduce_mean(std::vector<at::Tensor>& tensors);
  virtual void barrier() = 0;
};

// backend: "auto" (NCCL for CUDA devices, else Gloo; single process when
// world size is 1), "gloo", "nccl" or "none".
std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const std::string& backend,
                                                bool cuda_device);

// Averages gradients across ranks during backward: gradients are copied into
// flat buckets as autograd produces them, and each full bucket's all-reduce
// starts at once, overlapping communication with the rest of backward.
class GradientSynchronizer {
 public:
  GradientSynchronizer(Communicator& comm, std::vector<at::Tensor> params, long bucket_bytes = 25L << 20);
  ~GradientSynchronizer();
  // Waits for every bucket (zero-filling gradients a step did not produce)
  // and writes the averaged gradients into the parameters' .grad.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iris::train
