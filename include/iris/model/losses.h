#pragma once
// Segmentation loss of IRIS training: a region term (soft Dice, or the
// author's adaptive Tversky form) + binary cross-entropy per class (one
// sigmoid per class), averaged over the valid classes.
#include <string>

#include <ATen/Tensor.h>

namespace iris::model {

enum class RegionLoss {
  // 1 - (2 TP + s) / (sum p + sum y + s), s = 1e-5 (the paper's "Dice").
  soft_dice,
  // The author's code (Stanford-AIMI/MASS metrics/losses.py, BinaryDiceLoss):
  // alpha = FP / (FP + FN + 1e-6) clamped to [0.2, 0.8], beta = 1 - alpha,
  // 1 - TP / (TP + alpha FP + beta FN + 1e-6), with alpha inside the graph.
  adaptive_tversky,
};

// "soft_dice" | "adaptive_tversky"; iris::Error naming `setting` otherwise.
RegionLoss parse_region_loss(const std::string& name, const std::string& setting);
std::string region_loss_name(RegionLoss loss);

struct LossWeights {
  RegionLoss region = RegionLoss::soft_dice;
  double dice = 1.0;     // weight of the region term, whichever it is
  double bce = 1.0;
  double smooth = 1e-5;  // soft Dice only: keeps the Dice of an empty class finite
};

// The region term and the two weights as "key: value" text (the train.*
// keys loss, dice_weight, bce_weight), as a model file records them; and
// back, with an iris::Error naming `origin` for an unknown loss, a missing or
// unknown key, a weight that is not finite and >= 0, or two zero weights.
std::string loss_weights_to_text(const LossWeights& weights);
LossWeights loss_weights_from_text(const std::string& text, const std::string& origin);

struct LossTerms {
  at::Tensor total, dice, bce;  // scalars; `dice` is the region term
  at::Tensor dice_per_class;    // [B, K] region loss of each (item, class), detached; padding slots too
};

// logits, targets [B, K, D, H, W]; valid [B, K] (1 = real class, 0 = padding
// slot; undefined = all valid). The region term is computed per (item,
// class) over the volume; BCE is the voxel mean per (item, class); both are
// then averaged over valid slots (padding weighs 0).
LossTerms dice_bce_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& valid = {},
                        const LossWeights& weights = {});

}  // namespace iris::model
