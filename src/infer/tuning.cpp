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
                     const std::vector<MaskedWindow>& windows, const model::LossWeights& weights) {
  at::Tensor total;
  for (const auto& w : windows) {
    at::Tensor logits = net.decode(net.encode_image(w.image), stages);
    at::Tensor loss = model::dice_bce_loss(logits, w.masks, {}, weights).total;
    total = total.defined() ? total + loss : loss;
  }
  return total / static_cast<double>(windows.size());
}

// Class indices [first, first + n) of a K-class task, in groups of per_pass.
std::vector<std::vector<long>> class_groups(long classes, long per_pass) {
  const long step = per_pass > 0 ? per_pass : classes;
  std::vector<std::vector<long>> groups;
  for (long first = 0; first < classes; first += step) {
    groups.emplace_back();
    for (long k = first; k < std::min(classes, first + step); ++k) groups.back().push_back(k);
  }
  return groups;
}

std::vector<TuningExample> select_classes(const std::vector<TuningExample>& examples, const std::vector<long>& indices,
                                          long classes) {
  at::Tensor index = at::tensor(std::vector<int64_t>(indices.begin(), indices.end()), at::kLong);
  std::vector<TuningExample> out;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    if (e.masks.dim() != 4 || e.masks.size(0) != classes)
      throw Error("in-context tuning", "example " + std::to_string(i) + " needs masks [K, Z, Y, X] for the task's " +
                                           std::to_string(classes) + " classes");
    out.push_back({e.image, e.masks.index_select(0, index.to(e.masks.device()))});
  }
  return out;
}

TuningResult tune_all_together(model::IrisNetImpl& net, const model::TaskEmbedding& initial,
                               const std::vector<TuningExample>& examples, const TuningOptions& options,
                               long step_offset, long total_steps) {
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
    if (options.progress) options.progress(step_offset + step, total_steps, result.losses.back());
  }
  result.task = initial;
  for (size_t i = 0; i < stages.size(); ++i) result.task.stages[i] = stages[i].detach().to(at::kCPU).contiguous();
  {
    torch::NoGradGuard no_grad;
    result.losses.push_back(mean_loss(net, stages, windows, options.loss).item<double>());
  }
  return result;
}

}  // namespace

double tuning_loss(model::IrisNetImpl& net, const model::TaskEmbedding& task,
                   const std::vector<TuningExample>& examples, const TuningOptions& options) {
  const auto groups = class_groups(task.num_classes(), options.classes_per_pass);
  double sum = 0.0;
  for (const auto& group : groups) {
    const model::TaskEmbedding part = task.select(group);
    const auto windows = example_windows(net, part, select_classes(examples, group, task.num_classes()), options.device);
    torch::NoGradGuard no_grad;
    sum += mean_loss(net, part.to(options.device).stages, windows, options.loss).item<double>();
  }
  return sum / static_cast<double>(groups.size());
}

TuningResult tune_task_embedding(model::IrisNetImpl& net, const model::TaskEmbedding& initial,
                                 const std::vector<TuningExample>& examples, const TuningOptions& options) {
  if (options.steps < 0) throw Error("in-context tuning", "steps must be >= 0");
  if (!(options.learning_rate > 0)) throw Error("in-context tuning", "learning rate must be > 0");
  if (options.classes_per_pass < 0) throw Error("in-context tuning", "classes per pass must be >= 0");
  const auto groups = class_groups(initial.num_classes(), options.classes_per_pass);
  if (groups.size() <= 1) return tune_all_together(net, initial, examples, options, 0, options.steps);

  // Each group is its own small problem: its own windows, optimiser and moments.
  const long total = options.steps * static_cast<long>(groups.size());
  std::vector<model::TaskEmbedding> parts;
  TuningResult result;
  result.losses.assign(options.steps + 1, 0.0);
  for (size_t g = 0; g < groups.size(); ++g) {
    TuningResult part = tune_all_together(net, initial.select(groups[g]),
                                          select_classes(examples, groups[g], initial.num_classes()), options,
                                          options.steps * static_cast<long>(g), total);
    for (size_t i = 0; i < part.losses.size(); ++i) result.losses[i] += part.losses[i] / static_cast<double>(groups.size());
    parts.push_back(std::move(part.task));
  }
  result.task = model::TaskEmbedding::concat(parts);
  return result;
}

}  // namespace iris::infer
