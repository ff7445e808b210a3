#include "iris/train/communicator.h"

#include <cstdlib>
#include <mutex>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "iris/common/compat.h"
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

class SingleProcess : public Communicator {
 public:
  explicit SingleProcess(c10::Device device) : Communicator(device) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "none"; }

 protected:
  void do_broadcast(std::vector<at::Tensor>&) override {}
  std::function<void()> do_allreduce_sum_async(at::Tensor&) override {
    return [] {};
  }
  void do_barrier() override {}
};

#if defined(IRIS_HAVE_GLOO) || defined(IRIS_HAVE_NCCL)
c10::intrusive_ptr<c10d::Store> make_store(const DistributedEnv& env, std::chrono::seconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(env.master_port);
  o.isServer = env.rank == 0;
  o.numWorkers = env.world_size;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  try {
    return c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
  } catch (const std::exception& e) {
    throw Error("MASTER_ADDR/MASTER_PORT", "cannot meet the other ranks at " + env.master_addr + ":" +
                                               std::to_string(env.master_port) + " (" + e.what() + ")");
  }
}

// Works with both process-group classes: their collective signatures agree
// in LibTorch 1.13 and 2.x.
template <typename Group>
class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(c10::intrusive_ptr<Group> group, const DistributedEnv& env, const CommunicatorOptions& o,
                   std::string name)
      : Communicator(o.device),
        group_(std::move(group)),
        rank_(env.rank),
        size_(env.world_size),
        timeout_(o.timeout),
        name_(std::move(name)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return name_; }

 protected:
  void do_broadcast(std::vector<at::Tensor>& tensors) override {
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      wait(group_->broadcast(one), "broadcast");
    }
  }
  std::function<void()> do_allreduce_sum_async(at::Tensor& tensor) override {
    std::vector<at::Tensor> one{tensor};
    decltype(group_->allreduce(one)) work;
    try {
      work = group_->allreduce(one);
    } catch (const std::exception& e) {
      fail("all-reduce", e.what());
    }
    return [this, work] { wait(work, "all-reduce"); };
  }
  // An all-reduce of one number on the communicator's device: NCCL's own
  // barrier guesses the GPU from the rank, which is wrong on some nodes.
  void do_barrier() override {
    at::Tensor one = at::ones({1}, at::TensorOptions().device(device()));
    do_allreduce_sum_async(one)();
  }

 private:
  [[noreturn]] void fail(const char* what, const std::string& reason) const {
    std::string r = reason.substr(0, reason.find('\n'));
    throw Error("train.distributed_timeout_s",
                std::string(what) + " across " + std::to_string(size_) + " ranks (" + name_ + ") failed or timed out after " +
                    std::to_string(timeout_.count()) + " s: another rank has probably stopped; see its log (" + r + ")");
  }
  template <typename WorkPtr>
  void wait(const WorkPtr& work, const char* what) const {
    bool done = false;
    try {
      done = work->wait(std::chrono::duration_cast<std::chrono::milliseconds>(timeout_));
    } catch (const std::exception& e) {
      fail(what, e.what());
    }
    if (!done) fail(what, "no answer");
  }

  c10::intrusive_ptr<Group> group_;
  int rank_, size_;
  std::chrono::seconds timeout_;
  std::string name_;
};
#endif
}  // namespace

void Communicator::check(const at::Tensor& tensor, const char* collective) const {
  if (!tensor.defined() || tensor.device() != device_)
    throw Error("train.device", std::string("internal error: a ") + collective + " was handed a tensor on " +
                                    (tensor.defined() ? tensor.device().str() : std::string("no device")) +
                                    " but this communicator (" + backend() + ") runs on " + device_.str());
}

void Communicator::broadcast(std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) check(t, "broadcast");
  do_broadcast(tensors);
}

std::function<void()> Communicator::allreduce_sum_async(at::Tensor& tensor) {
  check(tensor, "all-reduce");
  return do_allreduce_sum_async(tensor);
}

void Communicator::allreduce_mean(std::vector<at::Tensor>& tensors) {
  std::vector<std::function<void()>> waits;
  for (auto& t : tensors) waits.push_back(allreduce_sum_async(t));
  for (auto& w : waits) w();
  if (size() > 1)
    for (auto& t : tensors) t.div_(size());
}

double Communicator::sum(double value) {
  at::Tensor t = at::full({1}, value, at::TensorOptions().dtype(at::kDouble).device(device_));
  allreduce_sum(t);
  return t.item<double>();
}

void Communicator::barrier() { do_barrier(); }

std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const CommunicatorOptions& o) {
  const std::string& backend = o.backend;
  if (backend == "none" || (backend == "auto" && env.world_size == 1)) {
    if (env.world_size != 1)
      throw Error("train.distributed", "'none' with WORLD_SIZE " + std::to_string(env.world_size));
    return std::make_unique<SingleProcess>(o.device);
  }
  if (o.timeout.count() <= 0) throw Error("train.distributed_timeout_s", "must be positive");
  const std::string chosen = backend == "auto" ? (o.device.is_cuda() ? "nccl" : "gloo") : backend;
  if (chosen == "gloo") {
#ifdef IRIS_HAVE_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(o.timeout));
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(make_store(env, o.timeout), env.rank, env.world_size, options);
    return std::make_unique<C10dCommunicator<c10d::ProcessGroupGloo>>(group, env, o, "gloo");
#else
    throw Error("train.distributed", "this build has no Gloo (install libgloo-dev and rebuild)");
#endif
  }
  if (chosen == "nccl") {
#ifdef IRIS_HAVE_NCCL
    if (!o.device.is_cuda())
      throw Error("train.distributed", "nccl needs train.device cuda (it is " + o.device.str() + "); use gloo on CPU");
    // A timed-out NCCL collective then ends the process with a message
    // instead of hanging it (names of LibTorch 2.2+ and of earlier versions).
    setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", 0);
    setenv("NCCL_ASYNC_ERROR_HANDLING", "1", 0);
    compat::cuda_set_device(o.device.index() < 0 ? 0 : o.device.index());
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(o.timeout);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(make_store(env, o.timeout), env.rank, env.world_size, options);
    return std::make_unique<C10dCommunicator<c10d::ProcessGroupNCCL>>(group, env, o, "nccl");
#else
    throw Error("train.distributed", "this build has no NCCL (build against a CUDA LibTorch)");
#endif
  }
  throw Error("train.distributed", "unknown backend '" + backend + "' (known: auto, gloo, nccl, none)");
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
  bool accumulating = false;

  Impl(Communicator& c, std::vector<at::Tensor> p) : comm(c), params(std::move(p)) {}

  void launch(Bucket& b) { b.wait = comm.allreduce_sum_async(b.flat); }

  void on_grad(size_t index, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mutex);
    if (accumulating) return;  // autograd adds it to .grad; sent with the last micro-batch
    auto [bi, slot] = where[index];
    Bucket& b = buckets[bi];
    at::Tensor view = b.flat.narrow(0, b.offsets[slot], params[index].numel());
    view.copy_(grad.reshape({-1}));
    // Earlier micro-batches of this step left their part in .grad.
    const at::Tensor& earlier = params[index].grad();
    if (earlier.defined()) view.add_(earlier.reshape({-1}));
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
  // With a backend named, collectives run even at world size 1 (one GPU
  // exercises the whole NCCL path); only "none" skips them.
  if (comm.backend() != "none")
    for (size_t i = 0; i < I.params.size(); ++i)
      I.params[i].register_hook([this, i](const at::Tensor& grad) { impl_->on_grad(i, grad); });
}

GradientSynchronizer::~GradientSynchronizer() = default;

void GradientSynchronizer::set_accumulating(bool accumulating) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->accumulating = accumulating;
}

void GradientSynchronizer::finish() {
  auto& I = *impl_;
  if (I.comm.backend() == "none") return;
  at::NoGradGuard no_grad;
  for (auto& b : I.buckets) {
    if (!b.wait) {
      // A gradient the last backward did not produce (unused parameter):
      // what earlier micro-batches accumulated, else zero.
      for (size_t s = 0; s < b.members.size(); ++s) {
        if (b.filled[s]) continue;
        const at::Tensor& p = I.params[b.members[s]];
        at::Tensor view = b.flat.narrow(0, b.offsets[s], p.numel());
        if (p.grad().defined()) view.copy_(p.grad().reshape({-1}));
        else view.zero_();
      }
      I.launch(b);
    }
  }
  for (auto& b : I.buckets) {
    b.wait();
    if (I.comm.size() > 1) b.flat.div_(I.comm.size());
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
