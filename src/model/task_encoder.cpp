#include "iris/model/task_encoder.h"
#include "iris/common/compat.h"

#include <torch/nn/init.h>

#include "iris/common/error.h"

namespace iris::model {

namespace nn = torch::nn;

NormReluConvImpl::NormReluConvImpl(long in_ch, long out_ch, long kernel) {
  conv = register_module("2", nn::Conv3d(nn::Conv3dOptions(in_ch, out_ch, kernel).padding(kernel / 2)));
}

at::Tensor NormReluConvImpl::forward(const at::Tensor& x) {
  return conv->forward(at::relu(at::group_norm(x, x.size(1), {}, {}, 1e-5)));
}

PositionalEmbeddingImpl::PositionalEmbeddingImpl(long channels, long max_size) {
  embedding = register_parameter("embedding", torch::randn({1, channels, max_size, max_size, max_size}));
}

at::Tensor PositionalEmbeddingImpl::forward(const at::Tensor& x) {
  const long D = x.size(2), H = x.size(3), W = x.size(4);
  if (D > embedding.size(2) || H > embedding.size(3) || W > embedding.size(4))
    throw Error("model", "input of " + std::to_string(D) + "x" + std::to_string(H) + "x" +
                             std::to_string(W) + " voxels exceeds the positional embedding (" +
                             std::to_string(embedding.size(2)) + " per axis): use a sliding window");
  using torch::indexing::Slice;
  return x + embedding.index({Slice(), Slice(), Slice(0, D), Slice(0, H), Slice(0, W)});
}

at::Tensor linear_interpolation_matrix(long in_size, long out_size) {
  at::Tensor m = at::zeros({out_size, in_size}, at::kFloat);
  auto a = m.accessor<float, 2>();
  const double step = out_size > 1 ? static_cast<double>(in_size - 1) / (out_size - 1) : 0.0;
  for (long i = 0; i < out_size; ++i) {
    const double src = i * step;
    const long i0 = std::min(static_cast<long>(src), in_size - 1);
    const long i1 = std::min(i0 + 1, in_size - 1);
    const double w1 = src - i0;
    a[i][i0] += static_cast<float>(1.0 - w1);
    a[i][i1] += static_cast<float>(w1);
  }
  return m;
}

TaskEncoderImpl::TaskEncoderImpl(const ModelConfig& c, long stage)
    : dim(c.stage_channels(stage)),
      scale(c.stage_scale(stage)),
      foreground_in_attention(c.foreground_token_in_attention) {
  const long expanded = scale * scale * scale;  // r^3 channels shuffle to one full-res channel
  task_query = register_parameter("task_query", torch::empty({c.query_tokens, dim}));
  nn::init::xavier_uniform_(task_query);
  attn_layers = register_module("attn_layers", nn::ModuleList());
  for (long i = 0; i < c.attention_blocks; ++i)
    attn_layers->push_back(TaskQueryAttentionBlock(dim, dim / c.head_dim, c.mlp_ratio));
  norm_foreground = register_module("norm_foreground", nn::LayerNorm(nn::LayerNormOptions({dim})));
  norm_query = register_module("norm_query", nn::LayerNorm(nn::LayerNormOptions({dim})));
  norm_combined = register_module("norm_combined", nn::LayerNorm(nn::LayerNormOptions({dim})));
  norm_post = register_module("norm_post", nn::LayerNorm(nn::LayerNormOptions({dim})));
  expand = register_module("expand", NormReluConv(dim, expanded, 1));
  merge = register_module("merge", NormReluConv(2, 1, 3));
  squeeze = register_module("squeeze", NormReluConv(expanded, dim, 1));
  pos_embed = register_module("pos_embed", PositionalEmbedding(1, c.max_patch_size));
}

at::Tensor TaskEncoderImpl::foreground_tokens(const at::Tensor& features, const at::Tensor& masks) const {
  // sum_v up(F)[c, v] m[v] = sum_u F[c, u] (Uᵀ m)[u]: trilinear upsampling U is
  // separable, so Uᵀ m is three small matrix products on the K masks instead
  // of a C x D x H x W upsampled feature map (1 GiB at 128³ x 512).
  const long B = features.size(0), C = features.size(1), K = masks.size(1);
  const auto opts = masks.options().dtype(at::kFloat);
  at::Tensor md = linear_interpolation_matrix(features.size(2), masks.size(2)).to(opts.device());
  at::Tensor mh = linear_interpolation_matrix(features.size(3), masks.size(3)).to(opts.device());
  at::Tensor mw = linear_interpolation_matrix(features.size(4), masks.size(4)).to(opts.device());
  at::Tensor m = masks.to(at::kFloat);
  at::Tensor weights = at::einsum("nkdhw,dx,hy,wz->nkxyz", {m, md, mh, mw});  // [B, K, d, h, w]
  at::Tensor sums = at::bmm(weights.reshape({B, K, -1}), features.to(at::kFloat).reshape({B, C, -1}).transpose(1, 2));
  at::Tensor count = m.sum({2, 3, 4}).clamp_min(1.0).unsqueeze(-1);  // [B, K, 1]
  return (sums / count).to(features.scalar_type());
}

at::Tensor TaskEncoderImpl::forward(const at::Tensor& features, const at::Tensor& masks) {
  const long B = features.size(0), K = masks.size(1);
  for (int axis = 0; axis < 3; ++axis)
    if (masks.size(2 + axis) != features.size(2 + axis) * scale)
      throw Error("model", "mask size does not match the reference image size (masks must be at input resolution)");
  at::Tensor fg = foreground_tokens(features, masks);  // [B, K, C]

  // Context path: sub-pixel expand the features to one full-resolution
  // channel, merge it with each class mask, and fold back to feature size.
  at::Tensor context = pixel_shuffle_3d(expand->forward(features), scale);  // [B, 1, D, H, W]
  const auto full = masks.sizes().slice(2);
  at::Tensor per_class = at::cat({context.unsqueeze(1).expand({B, K, 1, full[0], full[1], full[2]}),
                                  masks.to(context.scalar_type()).unsqueeze(2)},
                                 2)
                             .reshape({B * K, 2, full[0], full[1], full[2]});
  at::Tensor merged = pos_embed->forward(merge->forward(per_class));
  merged = squeeze->forward(pixel_unshuffle_3d(merged, scale));  // [B*K, C, d, h, w]
  merged = merged + features.unsqueeze(1).expand({B, K, -1, -1, -1, -1}).reshape(merged.sizes());
  at::Tensor kv = merged.flatten(2).transpose(1, 2);  // [B*K, d*h*w, C]

  at::Tensor queries = compat::layer_norm(norm_query, task_query).unsqueeze(0).expand({B * K, -1, -1});
  at::Tensor fg_token = compat::layer_norm(norm_foreground, fg.reshape({B * K, 1, dim}));
  at::Tensor tokens = foreground_in_attention ? compat::layer_norm(norm_combined, at::cat({queries, fg_token}, 1))
                                              : compat::layer_norm(norm_combined, queries);
  for (const auto& layer : *attn_layers) tokens = layer->as<TaskQueryAttentionBlock>()->forward(kv, tokens);
  // Paper variant: the foreground token joins after the attention, unchanged.
  if (!foreground_in_attention) tokens = at::cat({tokens, fg_token}, 1);
  tokens = compat::layer_norm(norm_post, tokens);
  return tokens.view({B, K, tokens.size(1), dim});
}

}  // namespace iris::model
