#pragma once
// The IRIS network: encoder, per-stage task encoders, fusion decoder, the
// hierarchical head and the class memory bank. The two halves are separate
// calls: encode a task once (reference image + masks -> task tokens), then
// segment any number of queries with it.
#include <vector>

#include <torch/nn/modules/container/modulelist.h>

#include "iris/model/decoder.h"
#include "iris/model/encoder.h"
#include "iris/model/model_config.h"
#include "iris/model/segmentation_head.h"
#include "iris/model/task_encoder.h"

namespace iris::model {

class IrisNetImpl : public torch::nn::Module {
 public:
  explicit IrisNetImpl(const ModelConfig& config);

  // Throws iris::Error unless image is [B, in_channels, D, H, W] with D, H, W
  // multiples of 16 and at most max_patch_size.
  void check_input(const at::Tensor& image, const char* what) const;

  // Encoder features, deepest first (5 maps).
  std::vector<at::Tensor> encode_image(const at::Tensor& image);
  // Task tokens per prior stage, [B, K, T, C_i], from reference features and
  // binary masks [B, K, D, H, W] at the reference image's resolution.
  std::vector<at::Tensor> encode_task_tokens(const std::vector<at::Tensor>& reference_features,
                                             const at::Tensor& masks);
  // Logits [B, K, D, H, W] (one sigmoid per class). tokens: per stage
  // [B, K, T, C] or [K, T, C] (shared by every batch item).
  at::Tensor decode(const std::vector<at::Tensor>& query_features, const std::vector<at::Tensor>& tokens);
  // Training forward: query [B,1,...], reference [B,1,...], masks [B,K,...].
  at::Tensor forward(const at::Tensor& query, const at::Tensor& reference, const at::Tensor& masks);

  // Memory-bank tokens for class ids (any shape S) -> per stage [S..., T, C].
  std::vector<at::Tensor> memory_bank_tokens(const at::Tensor& class_ids) const;
  // EMA update: bank[id] = m * bank[id] + (1 - m) * tokens, for every id >= 0
  // of class_ids [B, K]; tokens per stage [B, K, T, C]. Ids < 0 are padding.
  void update_memory_bank(const std::vector<at::Tensor>& tokens, const at::Tensor& class_ids);

  const ModelConfig& config() const { return config_; }

  // Stores conv weights (and feeds images) in channels-last 3-D layout, which
  // lets LibTorch take the oneDNN convolution kernels on CPU and cuDNN's
  // NDHWC kernels on GPU (timings: docs/inference.md).
  void set_channels_last(bool enabled);
  bool channels_last() const { return channels_last_; }

  // Activation checkpointing (checkpointing.h) of every image-encoder stage
  // and decoder up-step: their inner activations (the big ones, at full
  // resolution) are recomputed in the backward pass instead of kept. Same
  // outputs and gradients, less memory, about one extra forward of those
  // stages per step. A run-time switch, not stored in model files. Off by default.
  void set_activation_checkpointing(bool enabled);
  bool activation_checkpointing() const { return activation_checkpointing_; }

  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  torch::nn::ModuleList task_embedding{nullptr};
  SegmentationHead out{nullptr};
  std::vector<at::Tensor> memory_bank;  // buffers task_prior_i [bank size, T, C_i]

 private:
  ModelConfig config_;
  bool channels_last_ = false;
  bool activation_checkpointing_ = false;
};
TORCH_MODULE(IrisNet);

// Number of trainable parameter elements.
long count_parameters(const torch::nn::Module& module);

}  // namespace iris::model
