#pragma once
// Building blocks of the IRIS network. Submodule and parameter names follow
// the author's reference implementation (Stanford-AIMI/MASS), so that its
// state dicts map onto ours key for key.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace iris::model {

// InstanceNorm (no affine, eps 1e-4) -> ReLU -> Conv3d (no bias): the
// pre-activation convolution of the residual blocks. Key: conv.weight.
class ConvNormActImpl : public torch::nn::Module {
 public:
  ConvNormActImpl(long in_ch, long out_ch, long kernel = 3, long stride = 1);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv3d conv{nullptr};
};
TORCH_MODULE(ConvNormAct);

// Pre-activation residual block: two ConvNormAct plus a ConvNormAct shortcut
// when the width changes. Keys: conv1, conv2, shortcut.
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(long in_ch, long out_ch);
  at::Tensor forward(const at::Tensor& x);
  ConvNormAct conv1{nullptr}, conv2{nullptr}, shortcut{nullptr};
};
TORCH_MODULE(ResidualBlock);

// Linear -> GELU -> Linear. Keys: fc1, fc2.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(long in_dim, long hidden_dim, long out_dim);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Mlp);

// Batch-first multi-head attention with PyTorch's parameter layout
// (in_proj_weight [3C, C], in_proj_bias, out_proj), computed with the fused
// scaled-dot-product kernel where LibTorch has one.
class MultiheadAttentionImpl : public torch::nn::Module {
 public:
  MultiheadAttentionImpl(long dim, long heads);
  // query [B, Lq, C], key_value [B, Lk, C] -> [B, Lq, C]
  at::Tensor forward(const at::Tensor& query, const at::Tensor& key_value);
  long dim, heads;
  at::Tensor in_proj_weight, in_proj_bias;
  torch::nn::Linear out_proj{nullptr};
};
TORCH_MODULE(MultiheadAttention);

// The author's Attention/CrossAttention wrapper: only holds `mha`.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(long dim, long heads);
  at::Tensor forward(const at::Tensor& query, const at::Tensor& key_value) {
    return mha->forward(query, key_value);
  }
  MultiheadAttention mha{nullptr};
};
TORCH_MODULE(Attention);

// LayerNorm(eps 1e-4) then self-attention. Keys: norm, fn.mha.
class PreNormSelfAttentionImpl : public torch::nn::Module {
 public:
  PreNormSelfAttentionImpl(long dim, long heads);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::LayerNorm norm{nullptr};
  Attention fn{nullptr};
};
TORCH_MODULE(PreNormSelfAttention);

// LayerNorm(eps 1e-4) then MLP. Keys: norm, fn.fc1, fn.fc2.
class PreNormMlpImpl : public torch::nn::Module {
 public:
  PreNormMlpImpl(long dim, long hidden_dim);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::LayerNorm norm{nullptr};
  Mlp fn{nullptr};
};
TORCH_MODULE(PreNormMlp);

// Separate LayerNorms (eps 1e-5) on queries and keys, then cross-attention.
// Keys: norm1, norm2, fn.mha.
class DualPreNormCrossAttentionImpl : public torch::nn::Module {
 public:
  DualPreNormCrossAttentionImpl(long dim, long heads);
  at::Tensor forward(const at::Tensor& query, const at::Tensor& key_value);
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  Attention fn{nullptr};
};
TORCH_MODULE(DualPreNormCrossAttention);

// Task-query block: self-attn, MLP, cross-attn to the reference features,
// MLP, self-attn, MLP; all pre-norm residual.
class TaskQueryAttentionBlockImpl : public torch::nn::Module {
 public:
  TaskQueryAttentionBlockImpl(long dim, long heads, long mlp_ratio);
  // features [N, L, C] (keys/values), queries [N, T, C] -> [N, T, C]
  at::Tensor forward(const at::Tensor& features, at::Tensor queries);
  PreNormSelfAttention query_attn_block_1{nullptr}, query_attn_block_2{nullptr};
  DualPreNormCrossAttention query_aggregate_block{nullptr};
  PreNormMlp query_ffn_1{nullptr}, query_aggregate_ffn{nullptr}, query_ffn_2{nullptr};
};
TORCH_MODULE(TaskQueryAttentionBlock);

// Two-way fusion block over image tokens and all K*T task tokens:
// tokens <- image, image <- tokens, tokens <- tokens (each + MLP).
class TwoWayFusionBlockImpl : public torch::nn::Module {
 public:
  TwoWayFusionBlockImpl(long dim, long heads, long mlp_ratio);
  // image [B, N, C], tokens [B, K*T, C]; both updated in place of the inputs.
  void forward(at::Tensor& image, at::Tensor& tokens);
  DualPreNormCrossAttention prior_aggregate_block{nullptr}, feat_aggregate_block{nullptr};
  PreNormSelfAttention prior_attn_block{nullptr};
  PreNormMlp prior_ffn{nullptr}, feat_ffn{nullptr}, prior_ffn_2{nullptr};
};
TORCH_MODULE(TwoWayFusionBlock);

// 3-D sub-pixel shuffles (channel <-> space), in the author's channel order.
at::Tensor pixel_shuffle_3d(const at::Tensor& x, long scale);
at::Tensor pixel_unshuffle_3d(const at::Tensor& x, long scale);

}  // namespace iris::model
