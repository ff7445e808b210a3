#pragma once
// Task encoding of one prior stage: reference features + K binary masks ->
// K x (query_tokens + 1) task tokens.
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include "iris/model/blocks.h"
#include "iris/model/model_config.h"

namespace iris::model {

// InstanceNorm (eps 1e-5) -> ReLU -> Conv3d with bias. The conv is named "2"
// to match the author's nn.Sequential(norm, relu, conv) keys ("expand.2.weight").
class NormReluConvImpl : public torch::nn::Module {
 public:
  NormReluConvImpl(long in_ch, long out_ch, long kernel);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv3d conv{nullptr};
};
TORCH_MODULE(NormReluConv);

// Learnable positional embedding [1, C, P, P, P], sliced to the input size.
class PositionalEmbeddingImpl : public torch::nn::Module {
 public:
  PositionalEmbeddingImpl(long channels, long max_size);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor embedding;
};
TORCH_MODULE(PositionalEmbedding);

class TaskEncoderImpl : public torch::nn::Module {
 public:
  TaskEncoderImpl(const ModelConfig& config, long stage);
  // features [B, C, d, h, w]; masks [B, K, D, H, W] at full resolution
  // (D = d * scale) -> task tokens [B, K, query_tokens + 1, C].
  at::Tensor forward(const at::Tensor& features, const at::Tensor& masks);

  // Mask-weighted mean of the trilinearly upsampled features, [B, K, C],
  // computed without materialising the upsampled C-channel map.
  at::Tensor foreground_tokens(const at::Tensor& features, const at::Tensor& masks) const;

  long dim, scale;
  bool foreground_in_attention;
  at::Tensor task_query;
  torch::nn::ModuleList attn_layers{nullptr};
  torch::nn::LayerNorm norm_foreground{nullptr}, norm_query{nullptr}, norm_combined{nullptr},
      norm_post{nullptr};
  NormReluConv expand{nullptr}, merge{nullptr}, squeeze{nullptr};
  PositionalEmbedding pos_embed{nullptr};
};
TORCH_MODULE(TaskEncoder);

// [out, in] matrix of 1-D linear interpolation with align_corners=true:
// upsampled = M @ x. Its transpose is the adjoint used by foreground_tokens.
at::Tensor linear_interpolation_matrix(long in_size, long out_size);

}  // namespace iris::model
