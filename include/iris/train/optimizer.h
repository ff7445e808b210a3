#pragma once
// Optimisers over parameter groups: Lamb (LibTorch has none; the author's
// variant, as in MASS training/lamb_optimizer.py) and AdamW. Our own small
// class rather than torch::optim so that groups, learning-rate multipliers and
// the checkpointed state look the same in LibTorch 1.13 and 2.x.
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris {
class TensorFile;
}

namespace iris::train {

struct ParamGroup {
  std::string name;
  std::vector<std::string> param_names;
  std::vector<at::Tensor> params;
  double lr_scale = 1.0;      // group lr = base lr x lr_scale
  double weight_decay = 0.0;
};

struct OptimizerOptions {
  std::string kind = "lamb";  // lamb | adamw
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-6;
  // The author's Lamb has no Adam bias correction and clamps ||w|| to 10.
  bool bias_correction = false;
  double weight_norm_clamp = 10.0;
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, OptimizerOptions options);

  // One update with base learning rate `lr`; parameters without a gradient
  // are skipped.
  void step(double lr);
  void zero_grad();

  const std::vector<ParamGroup>& groups() const { return groups_; }
  long steps() const { return steps_; }

  // State as tensors and metadata under `prefix` in a checkpoint file.
  void save(TensorFile& file, const std::string& prefix) const;
  void load(const TensorFile& file, const std::string& prefix);

 private:
  std::vector<ParamGroup> groups_;
  OptimizerOptions options_;
  std::vector<std::vector<at::Tensor>> exp_avg_, exp_avg_sq_;
  std::vector<std::vector<long>> param_steps_;
  long steps_ = 0;
};

// Global L2 norm of all gradients, scaled down to max_norm if above (as
// torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
double clip_grad_norm(const std::vector<ParamGroup>& groups, double max_norm);

}  // namespace iris::train
