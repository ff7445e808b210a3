#pragma once
// Activation checkpointing: run a segment of the network without keeping its
// intermediate activations and recompute them during the backward pass.
// LibTorch's C++ API has no checkpoint utility; this one is a custom
// torch::autograd::Function.
//
// Why a "twin" module: the recomputation must not send gradients straight
// into the real parameters. If it did (a nested backward accumulating into
// .grad), a parameter used by two checkpointed segments -- the image encoder
// runs once for the query and once for the reference -- would reach its
// AccumulateGrad node twice per backward with partial gradients, and hooks on
// it (the trainer's GradientSynchroniser copies the hook's gradient into an
// all-reduce bucket and launches it when the bucket is full) would fire twice
// with partial values. LibTorch 2.x also runs leaf tensor hooks for
// torch::autograd::grad, so even grad() on the real parameters fires them.
// Instead the segment is recomputed on a twin: a module of the same
// architecture, never registered anywhere, whose parameters share the real
// ones' storage. Gradients are taken with respect to the twin's parameters
// and returned as this function's gradients for the real parameters, so the
// outer backward sums them with every other use and accumulates each
// parameter once, hooks included -- exactly as without checkpointing.
#include <functional>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

namespace iris::model {

// A segment: outputs from inputs, computed with the parameters of `m` (the
// real module in the forward pass, its twin in the recomputation).
using Segment =
    std::function<std::vector<at::Tensor>(torch::nn::Module& m, const std::vector<at::Tensor>& inputs)>;

// Forward: fn(*module, inputs) without recording a graph; keeps the inputs
// and the RNG states (CPU, and CUDA when an input is on CUDA).
// Backward: restores those RNG states (dropout draws the same masks),
// re-runs fn(*twin, inputs detached) with grad enabled, back-propagates the
// incoming gradients through it and returns the gradients of the inputs and
// of module's parameters. Without grad mode, or when neither the inputs nor
// the parameters require grad, it is just fn(*module, inputs).
// `twin` comes from make_twin(). fn must read no tensor that requires grad
// other than its inputs and m's parameters (the backward throws otherwise:
// such a tensor would silently get no gradient).
std::vector<at::Tensor> checkpointed(const Segment& fn, const std::shared_ptr<torch::nn::Module>& module,
                                     const std::shared_ptr<torch::nn::Module>& twin,
                                     const std::vector<at::Tensor>& inputs);

// One tensor in, one out, for a function that reads no parameters.
at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& input);

// A twin of `module` for checkpointed(): `make()` builds a module of the same
// architecture (its constructor), without consuming the global CPU RNG; its
// parameters and buffers then share module's storage (no extra memory). It
// is re-pointed at module's tensors before every recomputation, so moving
// the module (to(), channels-last, loading weights) needs no care.
std::shared_ptr<torch::nn::Module> make_twin(const torch::nn::Module& module,
                                             const std::function<std::shared_ptr<torch::nn::Module>()>& make);

}  // namespace iris::model
