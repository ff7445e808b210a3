#pragma once
// Segmentation loss of IRIS training: soft Dice + binary cross-entropy per
// class (one sigmoid per class), averaged over the valid classes.
#include <ATen/Tensor.h>

namespace iris::model {

struct LossWeights {
  double dice = 1.0;
  double bce = 1.0;
  double smooth = 1e-5;  // keeps the Dice of an empty class finite
};

struct LossTerms {
  at::Tensor total, dice, bce;  // scalars
  at::Tensor dice_per_class;    // [B, K] Dice loss of each (item, class), detached; padding slots too
};

// logits, targets [B, K, D, H, W]; valid [B, K] (1 = real class, 0 = padding
// slot; undefined = all valid). Dice is computed per (item, class) over the
// volume; BCE is the voxel mean per (item, class); both then averaged over
// valid slots.
LossTerms dice_bce_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& valid = {},
                        const LossWeights& weights = {});

}  // namespace iris::model
