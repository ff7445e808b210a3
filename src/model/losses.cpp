#include "iris/model/losses.h"

#include <cmath>

#include <ATen/ATen.h>

#include "iris/common/config_map.h"
#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::model {

RegionLoss parse_region_loss(const std::string& name, const std::string& setting) {
  if (name == "soft_dice") return RegionLoss::soft_dice;
  if (name == "adaptive_tversky") return RegionLoss::adaptive_tversky;
  throw Error(setting, "unknown loss '" + name + "' (known: soft_dice, adaptive_tversky; each is added to BCE)");
}

std::string region_loss_name(RegionLoss loss) {
  switch (loss) {
    case RegionLoss::soft_dice: return "soft_dice";
    case RegionLoss::adaptive_tversky: return "adaptive_tversky";
  }
  internal_error("loss", "unknown region loss");
}

std::string loss_weights_to_text(const LossWeights& w) {
  ConfigMap m;
  m.set("loss", region_loss_name(w.region));
  m.set("dice_weight", format_exact_number(w.dice));
  m.set("bce_weight", format_exact_number(w.bce));
  return m.to_text();
}

LossWeights loss_weights_from_text(const std::string& text, const std::string& origin) {
  const ConfigMap m = ConfigMap::parse_text(text, origin);
  reject_unknown_keys(m, {"loss", "dice_weight", "bce_weight"}, origin);
  for (const char* key : {"loss", "dice_weight", "bce_weight"})
    if (!m.has(key)) throw Error(origin, std::string("has no ") + key);
  LossWeights w;
  w.region = parse_region_loss(config_string(m, "loss"), origin + ": loss");
  w.dice = config_double(m, "dice_weight");
  w.bce = config_double(m, "bce_weight");
  for (const auto& [key, value] : {std::pair<const char*, double>{"dice_weight", w.dice}, {"bce_weight", w.bce}})
    if (!std::isfinite(value) || value < 0)
      throw Error(origin, std::string(key) + " must be a finite number >= 0, not " + std::to_string(value));
  if (w.dice == 0 && w.bce == 0) throw Error(origin, "dice_weight and bce_weight are both 0");
  return w;
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
