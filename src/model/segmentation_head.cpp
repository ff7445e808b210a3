#include "iris/model/segmentation_head.h"
#include "iris/common/compat.h"

#include <torch/nn/init.h>

namespace iris::model {

namespace nn = torch::nn;

SegmentationHeadImpl::SegmentationHeadImpl(long token_dim, long feature_dim) {
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({token_dim})));
  classifier_pred = register_module(
      "classifier_pred", nn::Sequential(Mlp(token_dim, token_dim, feature_dim), Mlp(feature_dim, feature_dim, feature_dim)));
  torch::NoGradGuard no_grad;
  for (auto& p : classifier_pred->named_parameters()) {
    if (p.key().find("weight") != std::string::npos) nn::init::xavier_uniform_(p.value());
    else p.value().zero_();
  }
}

at::Tensor SegmentationHeadImpl::forward(const at::Tensor& features, const std::vector<at::Tensor>& class_tokens) {
  at::Tensor kernels = classifier_pred->forward(compat::layer_norm(norm, at::cat(class_tokens, 2)));  // [B, K, F]
  const long B = features.size(0), F = features.size(1);
  std::vector<int64_t> shape{B, kernels.size(1)};
  for (long i = 2; i < features.dim(); ++i) shape.push_back(features.size(i));
  // One GEMM per batch item over the flattened volume; no permuted copy of
  // the full-resolution feature map.
  return at::bmm(kernels.to(features.scalar_type()), features.reshape({B, F, -1})).view(shape);
}

}  // namespace iris::model
