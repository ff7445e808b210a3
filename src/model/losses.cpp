#include "iris/model/losses.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::model {

RegionLoss parse_region_loss(const std::string& name, const std::string& setting) {
  if (name == "soft_dice") return RegionLoss::soft_dice;
  if (name == "adaptive_tversky") return RegionLoss::adaptive_tversky;
  throw Error(setting, "unknown loss '" + name + "' (known: soft_dice, adaptive_tversky; each is added to BCE)");
}

LossTerms dice_bce_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& valid,
                        const LossWeights& w) {
  if (logits.sizes() != targets.sizes()) internal_error("loss", "logits and targets differ in shape");
  const long B = logits.size(0), K = logits.size(1);
  // float32 at least (bf16 logits are widened); float64 stays float64.
  const at::ScalarType type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor x = logits.to(type).reshape({B, K, -1});
  at::Tensor y = targets.to(type).reshape({B, K, -1});
  at::Tensor p = x.sigmoid();
  at::Tensor tp = (p * y).sum(-1);  // [B, K]
  at::Tensor region;
  if (w.region == RegionLoss::adaptive_tversky) {
    constexpr double kSmooth = 1e-6;  // the author's constant
    // As the author sums them: sum(p) - TP would round below 0 for a class
    // predicted almost perfectly and send alpha to the wrong end of the clamp.
    at::Tensor fp = (p * (1.0 - y)).sum(-1);
    at::Tensor fn = ((1.0 - p) * y).sum(-1);
    at::Tensor alpha = (fp / (fp + fn + kSmooth)).clamp(0.2, 0.8);
    region = 1.0 - tp / (tp + alpha * fp + (1.0 - alpha) * fn + kSmooth);
  } else {
    region = 1.0 - (2.0 * tp + w.smooth) / (p.sum(-1) + y.sum(-1) + w.smooth);
  }
  at::Tensor bce = at::binary_cross_entropy_with_logits(x, y, {}, {}, at::Reduction::None).mean(-1);  // [B, K]
  at::Tensor v = valid.defined() ? valid.to(type).to(x.device()) : at::ones({B, K}, x.options());
  at::Tensor n = v.sum().clamp_min(1.0);
  LossTerms t;
  t.dice = (region * v).sum() / n;
  t.bce = (bce * v).sum() / n;
  t.total = w.dice * t.dice + w.bce * t.bce;
  t.dice_per_class = region.detach();
  return t;
}

}  // namespace iris::model
