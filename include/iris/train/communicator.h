#pragma once
// The small distributed interface the engine needs (as Marian's communicator
// and Flashlight's fl/distributed): rank, size, broadcast, all-reduce. Gloo
// on CPU, NCCL on CUDA builds, both c10d process groups; a single process
// with no backend named needs none of it.
//
// Right by construction: a communicator knows the device its collectives
// run on (NCCL: the rank's GPU; Gloo: the CPU or a GPU), and every
// collective refuses a tensor that lives elsewhere with an iris::Error
// instead of failing inside NCCL. With a backend named explicitly, a process
// group is made even at world size 1, so one GPU runs the whole NCCL path.
// Every collective has a timeout: a rank that died makes the others stop
// with an error naming train.distributed_timeout_s, never hang.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include "iris/common/device.h"

namespace iris::train {

using iris::DistributedEnv;

class Communicator {
 public:
  explicit Communicator(c10::Device device) : device_(device) {}
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "none" for a single process without a process group; else "gloo"/"nccl".
  virtual std::string backend() const = 0;
  // The device every tensor handed to a collective must live on.
  c10::Device device() const { return device_; }

  // In place, from rank 0.
  void broadcast(std::vector<at::Tensor>& tensors);
  // Starts a sum all-reduce of one tensor in place; the returned function waits for it.
  std::function<void()> allreduce_sum_async(at::Tensor& tensor);
  void allreduce_sum(at::Tensor& tensor) { allreduce_sum_async(tensor)(); }
  void allreduce_mean(std::vector<at::Tensor>& tensors);
  // A scalar summed over ranks (made on device(), read back on the host).
  double sum(double value);
  void barrier();

 protected:
  virtual void do_broadcast(std::vector<at::Tensor>& tensors) = 0;
  virtual std::function<void()> do_allreduce_sum_async(at::Tensor& tensor) = 0;
  virtual void do_barrier() = 0;

 private:
  void check(const at::Tensor& tensor, const char* collective) const;
  c10::Device device_;
};

struct CommunicatorOptions {
  // "auto" (world size 1: none; else NCCL for CUDA devices, Gloo for CPU),
  // "gloo", "nccl" or "none".
  std::string backend = "auto";
  c10::Device device{c10::kCPU};
  std::chrono::seconds timeout{600};
};

std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const CommunicatorOptions& options);

// Averages gradients across ranks during backward: gradients are copied into
// flat buckets as autograd produces them, and each full bucket's all-reduce
// starts at once, overlapping communication with the rest of backward.
class GradientSynchronizer {
 public:
  GradientSynchronizer(Communicator& comm, std::vector<at::Tensor> params, long bucket_bytes = 25L << 20);
  ~GradientSynchronizer();
  // Gradient accumulation: while accumulating, backward passes only add to
  // .grad (no communication); the backward after set_accumulating(false)
  // sends the accumulated sum.
  void set_accumulating(bool accumulating);
  // Waits for every bucket (zero-filling gradients a step did not produce)
  // and writes the averaged gradients into the parameters' .grad.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iris::train
