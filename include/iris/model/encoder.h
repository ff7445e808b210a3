#pragma once
// Residual 3-D U-Net encoder: a stem and four 2x max-pool stages.
#include <memory>
#include <vector>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>

#include "iris/model/blocks.h"
#include "iris/model/model_config.h"

namespace iris::model {

// Stem: a plain 3x3x3 conv then one residual block. Keys: conv1, conv2.
class StemImpl : public torch::nn::Module {
 public:
  StemImpl(long in_ch, long out_ch);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv3d conv1{nullptr};
  ResidualBlock conv2{nullptr};
};
TORCH_MODULE(Stem);

// 2x max-pool then residual blocks; key "conv.N" with the pool at index 0,
// as in the author's model ("down1.conv.1.conv1.conv.weight").
class DownStageImpl : public torch::nn::Module {
 public:
  DownStageImpl(long in_ch, long out_ch, long blocks);
  at::Tensor forward(const at::Tensor& x) { return conv->forward(x); }
  torch::nn::Sequential conv{nullptr};
};
TORCH_MODULE(DownStage);

class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const ModelConfig& config);
  // Feature maps from deepest to shallowest: {x5, x4, x3, x2, x1}.
  std::vector<at::Tensor> forward(const at::Tensor& image);
  // Runs the stem and each down stage as a checkpointed segment
  // (checkpointing.h): only the stage outputs are kept for the backward.
  void set_activation_checkpointing(bool enabled);
  bool activation_checkpointing() const { return !twins_.empty(); }
  Stem inc{nullptr};
  DownStage down1{nullptr}, down2{nullptr}, down3{nullptr}, down4{nullptr};

 private:
  // Stage i (0 = stem) as built from the configuration; also builds the twins.
  std::shared_ptr<torch::nn::Module> new_stage(size_t i) const;
  std::shared_ptr<torch::nn::Module> stage(size_t i) const;
  at::Tensor run_stage(size_t i, const at::Tensor& x);
  ModelConfig config_;
  std::vector<std::shared_ptr<torch::nn::Module>> twins_;  // per stage; empty when off
};
TORCH_MODULE(Encoder);

}  // namespace iris::model
