#include "iris/model/losses.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::model {

LossTerms dice_bce_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& valid,
                        const LossWeights& w) {
  if (logits.sizes() != targets.sizes()) internal_error("loss", "logits and targets differ in shape");
  const long B = logits.size(0), K = logits.size(1);
  at::Tensor x = logits.to(at::kFloat).reshape({B, K, -1});
  at::Tensor y = targets.to(at::kFloat).reshape({B, K, -1});
  at::Tensor p = x.sigmoid();
  at::Tensor inter = (p * y).sum(-1);
  at::Tensor dice = 1.0 - (2.0 * inter + w.smooth) / (p.sum(-1) + y.sum(-1) + w.smooth);  // [B, K]
  at::Tensor bce = at::binary_cross_entropy_with_logits(x, y, {}, {}, at::Reduction::None).mean(-1);  // [B, K]
  at::Tensor v = valid.defined() ? valid.to(at::kFloat).to(x.device()) : at::ones({B, K}, x.options());
  at::Tensor n = v.sum().clamp_min(1.0);
  LossTerms t;
  t.dice = (dice * v).sum() / n;
  t.bce = (bce * v).sum() / n;
  t.total = w.dice * t.dice + w.bce * t.bce;
  t.dice_per_class = dice.detach();
  return t;
}

}  // namespace iris::model
