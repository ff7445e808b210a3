#include "iris/train/optimizer.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "iris/common/error.h"
#include "iris/common/tensor_file.h"

namespace iris::train {

Optimizer::Optimizer(std::vector<ParamGroup> groups, OptimizerOptions options)
    : groups_(std::move(groups)), options_(std::move(options)) {
  if (options_.kind != "lamb" && options_.kind != "adamw")
    throw Error("train.optimizer", "unknown optimiser '" + options_.kind + "' (known: lamb, adamw)");
  for (const auto& g : groups_) {
    std::vector<at::Tensor> m, v;
    for (const auto& p : g.params) {
      m.push_back(at::zeros_like(p));
      v.push_back(at::zeros_like(p));
    }
    exp_avg_.push_back(m);
    exp_avg_sq_.push_back(v);
    param_steps_.emplace_back(g.params.size(), 0);
  }
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& p : g.params)
      if (p.grad().defined()) p.mutable_grad().zero_();
}

void Optimizer::step(double base_lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    auto& g = groups_[gi];
    const double lr = base_lr * g.lr_scale;
    if (lr == 0.0) continue;
    for (size_t pi = 0; pi < g.params.size(); ++pi) {
      at::Tensor& p = g.params[pi];
      if (!p.grad().defined()) continue;
      const at::Tensor grad = p.grad();
      at::Tensor& m = exp_avg_[gi][pi];
      at::Tensor& v = exp_avg_sq_[gi][pi];
      const long t = ++param_steps_[gi][pi];
      m.mul_(b1).add_(grad, 1 - b1);
      v.mul_(b2).addcmul_(grad, grad, 1 - b2);
      double c1 = 1.0, c2 = 1.0;
      if (options_.bias_correction || options_.kind == "adamw") {
        c1 = 1.0 - std::pow(b1, t);
        c2 = 1.0 - std::pow(b2, t);
      }
      at::Tensor update = (m / c1) / ((v / c2).sqrt() + options_.eps);
      if (options_.kind == "adamw") {
        // Decoupled weight decay (Loshchilov & Hutter).
        if (g.weight_decay != 0) p.mul_(1.0 - lr * g.weight_decay);
        p.add_(update, -lr);
        continue;
      }
      // Lamb: Adam direction plus L2 term, scaled by the layer trust ratio
      // ||w|| / ||update|| so every layer moves by a similar relative amount.
      if (g.weight_decay != 0) update.add_(p, g.weight_decay);
      const double w_norm = std::min(p.norm().item<double>(), options_.weight_norm_clamp);
      const double u_norm = update.norm().item<double>();
      const double trust = (w_norm == 0.0 || u_norm == 0.0) ? 1.0 : w_norm / u_norm;
      p.add_(update, -lr * trust);
    }
  }
}

void Optimizer::save(TensorFile& f, const std::string& prefix) const {
  f.set_int(prefix + "steps", steps_);
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const std::string k = prefix + groups_[gi].param_names[pi];
      f.put(k + ".exp_avg", exp_avg_[gi][pi]);
      f.put(k + ".exp_avg_sq", exp_avg_sq_[gi][pi]);
      f.set_int(k + ".step", param_steps_[gi][pi]);
    }
}

void Optimizer::load(const TensorFile& f, const std::string& prefix) {
  constexpr int64_t kMaxSteps = int64_t{1} << 48;
  steps_ = f.meta_int(prefix + "steps", 0, kMaxSteps);
  at::NoGradGuard no_grad;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const std::string k = prefix + groups_[gi].param_names[pi];
      const at::Tensor& like = exp_avg_[gi][pi];
      if (!f.has(k + ".exp_avg") || !f.has(k + ".exp_avg_sq"))
        throw Error(f.source(), "optimiser state for '" + groups_[gi].param_names[pi] +
                                    "' is missing (was this parameter frozen in that run?)");
      exp_avg_[gi][pi].copy_(f.get(k + ".exp_avg", like.scalar_type(), like.sizes()));
      exp_avg_sq_[gi][pi].copy_(f.get(k + ".exp_avg_sq", like.scalar_type(), like.sizes()));
      param_steps_[gi][pi] = f.meta_int(k + ".step", 0, kMaxSteps);
    }
}

double clip_grad_norm(const std::vector<ParamGroup>& groups, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& g : groups)
    for (const auto& p : g.params)
      if (p.grad().defined()) norms.push_back(p.grad().norm().to(at::kDouble).unsqueeze(0));
  if (norms.empty()) return 0.0;
  const double total = at::cat(norms).norm().item<double>();
  if (max_norm > 0 && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& g : groups)
      for (const auto& p : g.params)
        if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace iris::train
