#pragma once
// Hierarchical per-class head: the class tokens of every fusion stage become a
// dynamic 1x1x1 kernel per class, applied to the full-resolution features.
#include <vector>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/normalization.h>

#include "iris/model/blocks.h"

namespace iris::model {

class SegmentationHeadImpl : public torch::nn::Module {
 public:
  SegmentationHeadImpl(long token_dim, long feature_dim);
  // features [B, F, D, H, W]; class_tokens per stage [B, K, C_i] -> logits [B, K, D, H, W]
  at::Tensor forward(const at::Tensor& features, const std::vector<at::Tensor>& class_tokens);
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Sequential classifier_pred{nullptr};
};
TORCH_MODULE(SegmentationHead);

}  // namespace iris::model
