#include "iris/model/blocks.h"

#include <cmath>

#include <torch/nn/init.h>

#include "iris/common/compat.h"

namespace iris::model {

namespace nn = torch::nn;

ConvNormActImpl::ConvNormActImpl(long in_ch, long out_ch, long kernel, long stride) {
  conv = register_module(
      "conv", nn::Conv3d(nn::Conv3dOptions(in_ch, out_ch, kernel).stride(stride).padding(kernel / 2).bias(false)));
}

at::Tensor ConvNormActImpl::forward(const at::Tensor& x) {
  // InstanceNorm without affine == GroupNorm with one group per channel; the
  // group-norm kernel is the faster of the two on CPU and GPU.
  const at::Tensor in = at::relu(at::group_norm(x, x.size(1), {}, {}, 1e-4));
  if (compat::cpu_bf16_conv_weight_grad_is_wrong(in, conv->options.kernel_size()->at(0))) {
    compat::AutocastOff float32(c10::DeviceType::CPU);
    return conv->forward(in.to(conv->weight.scalar_type()));
  }
  return conv->forward(in);
}

ResidualBlockImpl::ResidualBlockImpl(long in_ch, long out_ch) {
  conv1 = register_module("conv1", ConvNormAct(in_ch, out_ch));
  conv2 = register_module("conv2", ConvNormAct(out_ch, out_ch));
  if (in_ch != out_ch) shortcut = register_module("shortcut", ConvNormAct(in_ch, out_ch));
}

at::Tensor ResidualBlockImpl::forward(const at::Tensor& x) {
  at::Tensor out = conv2->forward(conv1->forward(x));
  return out + (shortcut ? shortcut->forward(x) : x);
}

MlpImpl::MlpImpl(long in_dim, long hidden_dim, long out_dim) {
  fc1 = register_module("fc1", nn::Linear(in_dim, hidden_dim));
  fc2 = register_module("fc2", nn::Linear(hidden_dim, out_dim));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) { return fc2->forward(at::gelu(fc1->forward(x))); }

MultiheadAttentionImpl::MultiheadAttentionImpl(long dim_, long heads_) : dim(dim_), heads(heads_) {
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * dim, dim}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * dim}));
  out_proj = register_module("out_proj", nn::Linear(dim, dim));
  torch::nn::init::xavier_uniform_(in_proj_weight);
  torch::NoGradGuard no_grad;
  out_proj->bias.zero_();
}

at::Tensor MultiheadAttentionImpl::forward(const at::Tensor& query, const at::Tensor& key_value) {
  const long B = query.size(0), Lq = query.size(1), Lk = key_value.size(1);
  const long head_dim = dim / heads;
  at::Tensor q, k, v;
  if (query.is_same(key_value)) {
    // Self-attention: one projection GEMM for q, k and v.
    auto qkv = at::linear(query, in_proj_weight, in_proj_bias).chunk(3, -1);
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    auto w = in_proj_weight.split(dim, 0);
    auto b = in_proj_bias.split(dim, 0);
    q = at::linear(query, w[0], b[0]);
    auto kv = at::linear(key_value, at::cat({w[1], w[2]}, 0), at::cat({b[1], b[2]}, 0)).chunk(2, -1);
    k = kv[0], v = kv[1];
  }
  q = q.view({B, Lq, heads, head_dim}).transpose(1, 2);
  k = k.view({B, Lk, heads, head_dim}).transpose(1, 2);
  v = v.view({B, Lk, heads, head_dim}).transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(q, k, v);
  return out_proj->forward(out.transpose(1, 2).reshape({B, Lq, dim}));
}

AttentionImpl::AttentionImpl(long dim, long heads) {
  mha = register_module("mha", MultiheadAttention(dim, heads));
}

PreNormSelfAttentionImpl::PreNormSelfAttentionImpl(long dim, long heads) {
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-4)));
  fn = register_module("fn", Attention(dim, heads));
}

at::Tensor PreNormSelfAttentionImpl::forward(const at::Tensor& x) {
  at::Tensor n = compat::layer_norm(norm, x);
  return fn->forward(n, n);
}

PreNormMlpImpl::PreNormMlpImpl(long dim, long hidden_dim) {
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-4)));
  fn = register_module("fn", Mlp(dim, hidden_dim, dim));
}

at::Tensor PreNormMlpImpl::forward(const at::Tensor& x) { return fn->forward(compat::layer_norm(norm, x)); }

DualPreNormCrossAttentionImpl::DualPreNormCrossAttentionImpl(long dim, long heads) {
  norm1 = register_module("norm1", nn::LayerNorm(nn::LayerNormOptions({dim})));
  norm2 = register_module("norm2", nn::LayerNorm(nn::LayerNormOptions({dim})));
  fn = register_module("fn", Attention(dim, heads));
}

at::Tensor DualPreNormCrossAttentionImpl::forward(const at::Tensor& query, const at::Tensor& key_value) {
  return fn->forward(compat::layer_norm(norm1, query), compat::layer_norm(norm2, key_value));
}

TaskQueryAttentionBlockImpl::TaskQueryAttentionBlockImpl(long dim, long heads, long mlp_ratio) {
  const long hidden = dim * mlp_ratio;
  query_attn_block_1 = register_module("query_attn_block_1", PreNormSelfAttention(dim, heads));
  query_aggregate_block = register_module("query_aggregate_block", DualPreNormCrossAttention(dim, heads));
  query_attn_block_2 = register_module("query_attn_block_2", PreNormSelfAttention(dim, heads));
  query_ffn_1 = register_module("query_ffn_1", PreNormMlp(dim, hidden));
  query_aggregate_ffn = register_module("query_aggregate_ffn", PreNormMlp(dim, hidden));
  query_ffn_2 = register_module("query_ffn_2", PreNormMlp(dim, hidden));
}

at::Tensor TaskQueryAttentionBlockImpl::forward(const at::Tensor& features, at::Tensor q) {
  q = query_attn_block_1->forward(q) + q;
  q = query_ffn_1->forward(q) + q;
  q = query_aggregate_block->forward(q, features) + q;
  q = query_aggregate_ffn->forward(q) + q;
  q = query_attn_block_2->forward(q) + q;
  q = query_ffn_2->forward(q) + q;
  return q;
}

TwoWayFusionBlockImpl::TwoWayFusionBlockImpl(long dim, long heads, long mlp_ratio) {
  const long hidden = dim * mlp_ratio;
  prior_aggregate_block = register_module("prior_aggregate_block", DualPreNormCrossAttention(dim, heads));
  feat_aggregate_block = register_module("feat_aggregate_block", DualPreNormCrossAttention(dim, heads));
  prior_attn_block = register_module("prior_attn_block", PreNormSelfAttention(dim, heads));
  prior_ffn = register_module("prior_ffn", PreNormMlp(dim, hidden));
  feat_ffn = register_module("feat_ffn", PreNormMlp(dim, hidden));
  prior_ffn_2 = register_module("prior_ffn_2", PreNormMlp(dim, hidden));
}

void TwoWayFusionBlockImpl::forward(at::Tensor& image, at::Tensor& tokens) {
  tokens = prior_aggregate_block->forward(tokens, image) + tokens;
  tokens = prior_ffn->forward(tokens) + tokens;
  image = feat_aggregate_block->forward(image, tokens) + image;
  image = feat_ffn->forward(image) + image;
  tokens = prior_attn_block->forward(tokens) + tokens;
  tokens = prior_ffn_2->forward(tokens) + tokens;
}

at::Tensor pixel_shuffle_3d(const at::Tensor& x, long s) {
  const long B = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const long out_c = C / (s * s * s);
  return x.reshape({B, out_c, s, s, s, D, H, W})
      .permute({0, 1, 5, 2, 6, 3, 7, 4})
      .reshape({B, out_c, D * s, H * s, W * s});
}

at::Tensor pixel_unshuffle_3d(const at::Tensor& x, long s) {
  const long B = x.size(0), C = x.size(1), D = x.size(2) / s, H = x.size(3) / s, W = x.size(4) / s;
  return x.reshape({B, C, D, s, H, s, W, s})
      .permute({0, 3, 5, 7, 1, 2, 4, 6})
      .reshape({B, C * s * s * s, D, H, W});
}

}  // namespace iris::model
