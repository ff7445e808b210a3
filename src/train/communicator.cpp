#include "iris/train/communicator.h"

#include <cstdlib>
#include <mutex>

#include <ATen/ATen.h>

#include "iris/common/error.h"

#ifdef IRIS_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef IRIS_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace iris::train {

namespace {
int env_int(const char* a, const char* b, int fallback) {
  if (const char* v = std::getenv(a)) return std::atoi(v);
  if (b)
    if (const char* v = std::getenv(b)) return std::atoi(v);
  return fallback;
}

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "none"; }
  void broadcast(std::vector<at::Tensor>&) override {}
  std::function<void()> allreduce_sum_async(at::Tensor&) override {
    return [] {};
  }
  void barrier() override {}
};

#if defined(IRIS_HAVE_GLOO) || defined(IRIS_HAVE_NCCL)
c10::intrusive_ptr<c10d::Store> make_store(const DistributedEnv& env) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(env.master_port);
  o.isServer = env.rank == 0;
  o.numWorkers = env.world_size;
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
}

// Works with both process-group classes: their collective signatures agree
// in LibTorch 1.13 and 2.x.
template <typename Group>
class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(c10::intrusive_ptr<Group> group, int rank, int size, std::string name)
      : group_(std::move(group)), rank_(rank), size_(size), name_(std::move(name)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return name_; }
  void broadcast(std::vector<at::Tensor>& tensors) override {
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      group_->broadcast(one)->wait();
    }
  }
  std::function<void()> allreduce_sum_async(at::Tensor& tensor) override {
    std::vector<at::Tensor> one{tensor};
    auto work = group_->allreduce(one);
    return [work] { work->wait(); };
  }
  void barrier() override { group_->barrier()->wait(); }

 private:
  c10::intrusive_ptr<Group> group_;
  int rank_, size_;
  std::string name_;
};
#endif
}  // namespace

DistributedEnv DistributedEnv::from_environment() {
  DistributedEnv e;
  e.rank = env_int("RANK", "SLURM_PROCID", 0);
  e.world_size = env_int("WORLD_SIZE", "SLURM_NTASKS", 1);
  e.local_rank = env_int("LOCAL_RANK", "SLURM_LOCALID", 0);
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", nullptr, 29500);
  if (e.rank < 0 || e.rank >= e.world_size)
    throw Error("RANK", "rank " + std::to_string(e.rank) + " is outside world size " + std::to_string(e.world_size));
  return e;
}

void Communicator::allreduce_mean(std::vector<at::Tensor>& tensors) {
  if (size() == 1) return;
  std::vector<std::function<void()>> waits;
  for (auto& t : tensors) waits.push_back(allreduce_sum_async(t));
  for (auto& w : waits) w();
  for (auto& t : tensors) t.div_(size());
}

std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const std::string& backend,
                                                bool cuda_device) {
  if (backend == "none" || (backend == "auto" && env.world_size == 1)) {
    if (env.world_size != 1)
      throw Error("train.distributed.backend", "'none' with WORLD_SIZE " + std::to_string(env.world_size));
    return std::make_unique<SingleProcess>();
  }
  const std::string chosen = backend == "auto" ? (cuda_device ? "nccl" : "gloo") : backend;
  if (chosen == "gloo") {
#ifdef IRIS_HAVE_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create();
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(make_store(env), env.rank, env.world_size, options);
    return std::make_unique<C10dCommunicator<c10d::ProcessGroupGloo>>(group, env.rank, env.world_size, "gloo");
#else
    throw Error("train.distributed.backend", "this build has no Gloo (install libgloo-dev and rebuild)");
#endif
  }
  if (chosen == "nccl") {
#ifdef IRIS_HAVE_NCCL
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(make_store(env), env.rank, env.world_size);
    return std::make_unique<C10dCommunicator<c10d::ProcessGroupNCCL>>(group, env.rank, env.world_size, "nccl");
#else
    throw Error("train.distributed.backend", "this build has no NCCL (build against a CUDA LibTorch)");
#endif
  }
  throw Error("train.distributed.backend", "unknown backend '" + backend + "' (known: auto, gloo, nccl, none)");
}

struct GradientSynchronizer::Impl {
  Communicator& comm;
  std::vector<at::Tensor> params;
  struct Bucket {
    std::vector<size_t> members;
    std::vector<long> offsets;
    at::Tensor flat;
    long ready = 0;
    std::function<void()> wait;
    std::vector<bool> filled;
  };
  std::vector<Bucket> buckets;
  std::vector<std::pair<size_t, size_t>> where;  // param -> (bucket, slot)
  std::mutex mutex;

  Impl(Communicator& c, std::vector<at::Tensor> p) : comm(c), params(std::move(p)) {}

  void launch(Bucket& b) { b.wait = comm.allreduce_sum_async(b.flat); }

  void on_grad(size_t index, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mutex);
    auto [bi, slot] = where[index];
    Bucket& b = buckets[bi];
    at::Tensor view = b.flat.narrow(0, b.offsets[slot], params[index].numel());
    view.copy_(grad.reshape({-1}));
    if (!b.filled[slot]) {
      b.filled[slot] = true;
      if (++b.ready == static_cast<long>(b.members.size())) launch(b);
    }
  }
};

GradientSynchronizer::GradientSynchronizer(Communicator& comm, std::vector<at::Tensor> params, long bucket_bytes)
    : impl_(std::make_unique<Impl>(comm, std::move(params))) {
  auto& I = *impl_;
  I.where.resize(I.params.size());
  // Gradients arrive roughly from the last layer to the first: bucket in reverse.
  Impl::Bucket current;
  long bytes = 0;
  auto close = [&] {
    if (current.members.empty()) return;
    long total = 0;
    for (size_t m : current.members) {
      current.offsets.push_back(total);
      total += I.params[m].numel();
    }
    current.flat = at::zeros({total}, I.params[current.members[0]].options().requires_grad(false));
    current.filled.assign(current.members.size(), false);
    for (size_t s = 0; s < current.members.size(); ++s) I.where[current.members[s]] = {I.buckets.size(), s};
    I.buckets.push_back(std::move(current));
    current = Impl::Bucket{};
    bytes = 0;
  };
  for (size_t i = I.params.size(); i-- > 0;) {
    current.members.push_back(i);
    bytes += I.params[i].numel() * I.params[i].element_size();
    if (bytes >= bucket_bytes) close();
  }
  close();
  if (comm.size() > 1)
    for (size_t i = 0; i < I.params.size(); ++i)
      I.params[i].register_hook([this, i](const at::Tensor& grad) { impl_->on_grad(i, grad); });
}

GradientSynchronizer::~GradientSynchronizer() = default;

void GradientSynchronizer::finish() {
  auto& I = *impl_;
  if (I.comm.size() == 1) return;
  for (auto& b : I.buckets) {
    if (!b.wait) {
      // Some gradient never came (unused parameter): it contributes zero.
      for (size_t s = 0; s < b.members.size(); ++s)
        if (!b.filled[s]) b.flat.narrow(0, b.offsets[s], I.params[b.members[s]].numel()).zero_();
      I.launch(b);
    }
  }
  at::NoGradGuard no_grad;
  for (auto& b : I.buckets) {
    b.wait();
    b.flat.div_(I.comm.size());
    for (size_t s = 0; s < b.members.size(); ++s) {
      at::Tensor& p = I.params[b.members[s]];
      at::Tensor avg = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(avg);
      else p.mutable_grad() = avg.clone();
    }
    b.wait = nullptr;
    b.ready = 0;
    b.filled.assign(b.members.size(), false);
  }
}

}  // namespace iris::train
