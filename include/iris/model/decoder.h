#pragma once
// U-Net decoder with two-way fusion of task tokens before the deepest
// up-steps; returns full-resolution features and the per-stage class tokens.
#include <memory>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>

#include "iris/model/blocks.h"
#include "iris/model/model_config.h"

namespace iris::model {

// attn_layers of two-way blocks over image tokens and all K*T task tokens.
class FusionLayerImpl : public torch::nn::Module {
 public:
  FusionLayerImpl(long dim, long heads, long mlp_ratio, long blocks);
  // features [B, C, D, H, W], tokens [B, K, T, C] -> fused features, updated tokens
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& features, const at::Tensor& tokens);
  torch::nn::ModuleList attn_layers{nullptr};
};
TORCH_MODULE(FusionLayer);

// Trilinear upsample (align_corners), concat skip, residual blocks. Key: conv.N
class UpStageImpl : public torch::nn::Module {
 public:
  UpStageImpl(long in_ch, long out_ch, long blocks);
  at::Tensor forward(const at::Tensor& deep, const at::Tensor& skip);
  torch::nn::Sequential conv{nullptr};
};
TORCH_MODULE(UpStage);

struct DecoderOutput {
  at::Tensor features;                    // [B, channels[0], D, H, W]
  std::vector<at::Tensor> class_tokens;   // per prior stage: token 0 of each class, [B, K, C]
};

class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const ModelConfig& config);
  // features: encoder output (deep first); tokens: per prior stage [B, K, T, C].
  DecoderOutput forward(const std::vector<at::Tensor>& features, const std::vector<at::Tensor>& tokens);
  // Runs each up-step (upsample, concat, residual blocks) as a checkpointed
  // segment (checkpointing.h); the fusion layers work on small maps and are
  // left as they are.
  void set_activation_checkpointing(bool enabled);
  bool activation_checkpointing() const { return !twins_.empty(); }
  torch::nn::ModuleList prior_fuse{nullptr};
  UpStage up1{nullptr}, up2{nullptr}, up3{nullptr}, up4{nullptr};

 private:
  // Up-step i (0 = deepest) as built from the configuration; also builds the twins.
  std::shared_ptr<UpStageImpl> new_stage(size_t i) const;
  std::shared_ptr<UpStageImpl> stage(size_t i) const;
  ModelConfig config_;
  std::vector<std::shared_ptr<torch::nn::Module>> twins_;  // per up-step; empty when off
};
TORCH_MODULE(Decoder);

}  // namespace iris::model
