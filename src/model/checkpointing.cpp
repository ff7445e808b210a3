#include "iris/model/checkpointing.h"
#include "iris/common/compat.h"

#include <algorithm>
#include <mutex>
#include <unordered_set>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#ifdef IRIS_HAVE_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor rng_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

at::Generator cuda_generator(c10::DeviceIndex device) {
#ifdef IRIS_HAVE_CUDA
  return at::cuda::detail::getDefaultCUDAGenerator(device);
#else
  (void)device;
  throw Error("activation checkpointing", "CUDA tensor in a build without CUDA");
#endif
}

struct RngStates {
  at::Tensor cpu, cuda;
  c10::DeviceIndex cuda_device = -1;
};

RngStates capture_rng(const std::vector<at::Tensor>& inputs) {
  RngStates s;
  s.cpu = rng_state(at::detail::getDefaultCPUGenerator());
  for (const auto& x : inputs) {
    if (x.defined() && x.is_cuda()) {
      s.cuda_device = x.get_device();
      s.cuda = rng_state(cuda_generator(s.cuda_device));
      break;
    }
  }
  return s;
}

void restore_rng(const RngStates& s) {
  set_rng_state(at::detail::getDefaultCPUGenerator(), s.cpu);
  if (s.cuda.defined()) set_rng_state(cuda_generator(s.cuda_device), s.cuda);
}

// Replays the forward-time RNG states for the recomputation, then puts the
// current ones back so the rest of the program draws what it would have
// drawn without checkpointing.
class RngReplay {
 public:
  explicit RngReplay(const RngStates& forward) {
    now_.cpu = rng_state(at::detail::getDefaultCPUGenerator());
    if (forward.cuda.defined()) {
      now_.cuda_device = forward.cuda_device;
      now_.cuda = rng_state(cuda_generator(forward.cuda_device));
    }
    restore_rng(forward);
  }
  ~RngReplay() { restore_rng(now_); }
  RngReplay(const RngReplay&) = delete;
  RngReplay& operator=(const RngReplay&) = delete;

 private:
  RngStates now_;
};

// Points `to`'s parameters and buffers at `from`'s storage (metadata only).
void share_tensors(const torch::nn::Module& from, torch::nn::Module& to) {
  if (&from == &to) return;
  torch::NoGradGuard no_grad;
  auto share = [](const auto& src, const auto& dst, const char* kind) {
    if (src.size() != dst.size())
      internal_error("activation checkpointing", std::string("the twin module has a different number of ") + kind);
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i].key() != dst[i].key())
        internal_error("activation checkpointing", "the twin module has " + dst[i].key() + " where the module has " +
                                                    src[i].key());
      at::Tensor d = dst[i].value();
      d.set_data(src[i].value().data());
      if (d.is_leaf() && d.requires_grad() != src[i].value().requires_grad())
        d.requires_grad_(src[i].value().requires_grad());
    }
  };
  share(from.named_parameters(), to.named_parameters(), "parameters");
  share(from.named_buffers(), to.named_buffers(), "buffers");
}

// A tensor read by the segment that requires grad but is neither an input nor
// a parameter would get no gradient at all: refuse rather than train wrongly.
void check_graph_leaves(const std::vector<at::Tensor>& roots, const std::vector<at::Tensor>& allowed) {
  std::unordered_set<const c10::TensorImpl*> ok;
  for (const auto& t : allowed) ok.insert(t.unsafeGetTensorImpl());
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack;
  for (const auto& r : roots)
    if (r.grad_fn()) stack.push_back(r.grad_fn().get());
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    if (!seen.insert(node).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
      if (!ok.count(acc->variable.unsafeGetTensorImpl()))
        throw Error("activation checkpointing",
                    "the segment reads a tensor that requires grad but is neither one of its inputs nor a "
                    "parameter of its module; it would get no gradient");
      continue;
    }
    for (const auto& edge : node->next_edges())
      if (edge.function) stack.push_back(edge.function.get());
  }
}

struct SegmentState : torch::CustomClassHolder {
  Segment fn;
  std::shared_ptr<torch::nn::Module> module, twin;
  std::vector<bool> input_requires_grad;
  size_t parameters = 0;
  RngStates rng;
  // Autocast as the forward saw it, replayed by the recomputation.
  bool autocast_cpu = false, autocast_cuda = false;
  at::ScalarType autocast_cpu_dtype = at::kBFloat16, autocast_cuda_dtype = at::kHalf;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // `params` are arguments only so that the node gets edges to them: their
  // gradients come back through this node's backward.
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, at::TensorList params,
                               c10::intrusive_ptr<SegmentState> state) {
    std::vector<at::Tensor> in = inputs.vec();
    for (const auto& x : in) state->input_requires_grad.push_back(x.defined() && x.requires_grad());
    state->parameters = params.size();
    state->rng = capture_rng(in);  // before fn draws anything
    using compat::AutocastGuard;
    state->autocast_cpu = AutocastGuard::is_enabled(c10::DeviceType::CPU);
    state->autocast_cuda = AutocastGuard::is_enabled(c10::DeviceType::CUDA);
    state->autocast_cpu_dtype = AutocastGuard::get_dtype(c10::DeviceType::CPU);
    state->autocast_cuda_dtype = AutocastGuard::get_dtype(c10::DeviceType::CUDA);
    ctx->save_for_backward(in);
    // Autocast caches the bf16 copies of weights it casts; made here under
    // no-grad they would carry no gradient to a later non-checkpointed use.
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    std::vector<at::Tensor> out;
    try {
      out = state->fn(*state->module, in);
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
    at::autocast::set_autocast_cache_enabled(cache);
    ctx->saved_data["state"] = at::IValue::make_capsule(std::move(state));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (torch::GradMode::is_enabled())
      internal_error("activation checkpointing", "double backward (create_graph) is not supported");
    const auto holder = ctx->saved_data["state"].toCapsule();
    auto& state = *static_cast<SegmentState*>(holder.get());
    const variable_list saved = ctx->get_saved_variables();

    std::vector<at::Tensor> inputs, wrt;
    std::vector<size_t> slot;  // wrt[k]'s position in the returned list
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor x = saved[i].defined() ? saved[i].detach() : saved[i];
      if (state.input_requires_grad[i]) {
        x.requires_grad_(true);
        wrt.push_back(x);
        slot.push_back(i);
      }
      inputs.push_back(x);
    }
    share_tensors(*state.module, *state.twin);
    state.twin->train(state.module->is_training());
    const auto twin_params = state.twin->parameters();
    for (size_t j = 0; j < twin_params.size(); ++j) {
      if (twin_params[j].requires_grad()) {
        wrt.push_back(twin_params[j]);
        slot.push_back(saved.size() + j);
      }
    }

    std::vector<at::Tensor> outputs;
    {
      RngReplay replay(state.rng);
      compat::AutocastGuard cpu(c10::DeviceType::CPU, state.autocast_cpu_dtype, state.autocast_cpu);
      compat::AutocastGuard cuda(c10::DeviceType::CUDA, state.autocast_cuda_dtype, state.autocast_cuda);
      torch::AutoGradMode grad_mode(true);
      outputs = state.fn(*state.twin, inputs);
    }
    std::vector<at::Tensor> roots, root_grads;
    for (size_t i = 0; i < outputs.size() && i < grad_outputs.size(); ++i) {
      if (outputs[i].defined() && outputs[i].requires_grad() && grad_outputs[i].defined()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grad_outputs[i]);
      }
    }
    // One entry per forward argument: inputs, parameters, and the state.
    variable_list result(saved.size() + state.parameters + 1);
    if (roots.empty() || wrt.empty()) return result;
    check_graph_leaves(roots, wrt);
    // grad(), not backward(): nothing is accumulated into the twin, and the
    // real parameters receive these through the outer backward.
    variable_list grads = torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < grads.size(); ++k) result[slot[k]] = grads[k];
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> checkpointed(const Segment& fn, const std::shared_ptr<torch::nn::Module>& module,
                                     const std::shared_ptr<torch::nn::Module>& twin,
                                     const std::vector<at::Tensor>& inputs) {
  if (!module || !twin) internal_error("activation checkpointing", "a module and its twin are required");
  const std::vector<at::Tensor> params = module->parameters();
  auto needs_grad = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!torch::GradMode::is_enabled() ||
      (std::none_of(inputs.begin(), inputs.end(), needs_grad) &&
       std::none_of(params.begin(), params.end(), needs_grad)))
    return fn(*module, inputs);
  auto state = c10::make_intrusive<SegmentState>();
  state->fn = fn;
  state->module = module;
  state->twin = twin;
  return CheckpointFunction::apply(at::TensorList(inputs), at::TensorList(params), std::move(state));
}

at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& input) {
  // No parameters: the module is an empty placeholder and its own twin.
  auto none = std::make_shared<torch::nn::Module>();
  Segment segment = [fn](torch::nn::Module&, const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{fn(in[0])};
  };
  return checkpointed(segment, none, none, {input})[0];
}

std::shared_ptr<torch::nn::Module> make_twin(const torch::nn::Module& module,
                                             const std::function<std::shared_ptr<torch::nn::Module>()>& make) {
  // Building initialises parameters from the global generator: put its state
  // back, so that switching checkpointing on shifts no later random number.
  auto gen = at::detail::getDefaultCPUGenerator();
  const at::Tensor state = rng_state(gen);
  std::shared_ptr<torch::nn::Module> twin = make();
  set_rng_state(gen, state);
  share_tensors(module, *twin);  // frees the twin's own initial values
  return twin;
}

}  // namespace iris::model
