#include "iris/infer/tuning.h"

#include <memory>

#include <ATen/ATen.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "iris/common/error.h"
#include "iris/infer/reference.h"
#include "iris/model/iris_net.h"

namespace iris::infer {

namespace {

// Freezes every parameter for its lifetime; restores the flags afterwards,
// so a network being trained elsewhere is left as it was.
class FrozenParameters {
 public:
  explicit FrozenParameters(model::IrisNetImpl& net) : parameters_(net.parameters()) {
    for (auto& p : parameters_) {
      flags_.push_back(p.requires_grad());
      p.set_requires_grad(false);
    }
  }
  ~FrozenParameters() {
    for (size_t i = 0; i < parameters_.size(); ++i) parameters_[i].set_requires_grad(flags_[i]);
  }

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<bool> flags_;
};

std::vector<MaskedWindow> example_windows(const model::IrisNetImpl& net, const model::TaskEmbedding& task,
                                          const std::vector<TuningExample>& examples, const c10::Device& device) {
  if (examples.empty()) throw Error("in-context tuning", "needs at least one labelled example");
  std::vector<MaskedWindow> windows;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    if (e.masks.dim() != 4 || e.masks.size(0) != task.num_classes())
      throw Error("in-context tuning", "example " + std::to_string(i) + " needs masks [K, Z, Y, X] for the task's " +
                                           std::to_string(task.num_classes()) + " classes");
    MaskedWindow w = crop_around_masks(e.image, e.masks, net.config().max_patch_size);
    windows.push_back({w.image.to(device), w.masks.to(device)});
  }
  return windows;
}

at::Tensor mean_loss(model::IrisNetImpl& net, const std::vector<at::Tensor>& stages,
                     const std::vector<MaskedWindow>& windows, const train::LossWeights& weights) {
  at::Tensor total;
  for (const auto& w : windows) {
    at::Tensor logits = net.decode(net.encode_image(w.image), stages);
    at::Tensor loss = train::dice_bce_loss(logits, w.masks, {}, weights).total;
    total = total.defined() ? total + loss : loss;
  }
  return total / static_cast<double>(windows.size());
}

}  // namespace

double tuning_loss(model::IrisNetImpl& net, const model::TaskEmbedding& task,
                   const std::vector<TuningExample>& examples, const TuningOptions& options) {
  const auto windows = example_windows(net, task, examples, options.device);
  torch::NoGradGuard no_grad;
  return mean_loss(net, task.to(options.device).stages, windows, options.loss).item<double>();
}

TuningResult tune_task_embedding(model::IrisNetImpl& net, const model::TaskEmbedding& initial,
                                 const std::vector<TuningExample>& examples, const TuningOptions& options) {
  if (options.steps < 0) throw Error("in-context tuning", "steps must be >= 0");
  if (!(options.learning_rate > 0)) throw Error("in-context tuning", "learning rate must be > 0");
  const auto windows = example_windows(net, initial, examples, options.device);
  FrozenParameters frozen(net);
  torch::AutoGradMode enable_grad(true);

  std::vector<at::Tensor> stages;
  for (const auto& s : initial.stages) stages.push_back(s.detach().to(options.device, at::kFloat).clone().requires_grad_(true));
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (options.adamw)
    optimizer = std::make_unique<torch::optim::AdamW>(
        stages, torch::optim::AdamWOptions(options.learning_rate).weight_decay(options.weight_decay));
  else
    optimizer = std::make_unique<torch::optim::Adam>(
        stages, torch::optim::AdamOptions(options.learning_rate).weight_decay(options.weight_decay));

  TuningResult result;
  for (long step = 1; step <= options.steps; ++step) {
    optimizer->zero_grad();
    at::Tensor loss = mean_loss(net, stages, windows, options.loss);
    loss.backward();
    optimizer->step();
    result.losses.push_back(loss.item<double>());
    if (options.progress) options.progress(step, options.steps, result.losses.back());
  }
  result.task = initial;
  for (size_t i = 0; i < stages.size(); ++i) result.task.stages[i] = stages[i].detach().to(at::kCPU).contiguous();
  {
    torch::NoGradGuard no_grad;
    result.losses.push_back(mean_loss(net, stages, windows, options.loss).item<double>());
  }
  return result;
}

}  // namespace iris::infer
