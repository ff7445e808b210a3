#include "iris/model/decoder.h"

#include <ATen/ATen.h>

#include "iris/model/checkpointing.h"
#include "iris/model/stage_timer.h"

namespace iris::model {

namespace nn = torch::nn;

FusionLayerImpl::FusionLayerImpl(long dim, long heads, long mlp_ratio, long blocks) {
  attn_layers = register_module("attn_layers", nn::ModuleList());
  for (long i = 0; i < blocks; ++i) attn_layers->push_back(TwoWayFusionBlock(dim, heads, mlp_ratio));
}

std::pair<at::Tensor, at::Tensor> FusionLayerImpl::forward(const at::Tensor& features,
                                                           const at::Tensor& tokens) {
  StageScope scope("fusion attention");
  const long B = features.size(0), C = features.size(1);
  const auto spatial = features.sizes().slice(2).vec();
  at::Tensor image = features.flatten(2).transpose(1, 2);  // [B, N, C]
  at::Tensor flat_tokens = tokens.reshape({B, -1, C});      // [B, K*T, C]
  for (const auto& layer : *attn_layers) layer->as<TwoWayFusionBlock>()->forward(image, flat_tokens);
  std::vector<int64_t> shape{B, C};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  return {image.transpose(1, 2).reshape(shape), flat_tokens.view(tokens.sizes())};
}

UpStageImpl::UpStageImpl(long in_ch, long out_ch, long blocks) {
  conv = register_module("conv", nn::Sequential());
  conv->push_back(ResidualBlock(in_ch + out_ch, out_ch));
  for (long i = 1; i < blocks; ++i) conv->push_back(ResidualBlock(out_ch, out_ch));
}

at::Tensor UpStageImpl::forward(const at::Tensor& deep, const at::Tensor& skip) {
  at::Tensor joined;
  {
    StageScope scope("upsampling");
    // Interpolate in float32: trilinear has no bfloat16 kernel on every build.
    at::Tensor up = at::upsample_trilinear3d(deep.to(at::kFloat), skip.sizes().slice(2), true,
                                             c10::nullopt, c10::nullopt, c10::nullopt)
                        .to(deep.scalar_type());
    joined = at::cat({skip, up}, 1);
  }
  StageScope scope("decoder convolutions");
  return conv->forward(joined);
}

DecoderImpl::DecoderImpl(const ModelConfig& c) : config_(c) {
  prior_fuse = register_module("prior_fuse", nn::ModuleList());
  for (long i = 0; i < c.prior_stages; ++i) {
    const long dim = c.stage_channels(i);
    prior_fuse->push_back(FusionLayer(dim, dim / c.head_dim, c.mlp_ratio, c.attention_blocks));
  }
  up1 = register_module("up1", UpStage(new_stage(0)));
  up2 = register_module("up2", UpStage(new_stage(1)));
  up3 = register_module("up3", UpStage(new_stage(2)));
  up4 = register_module("up4", UpStage(new_stage(3)));
}

std::shared_ptr<UpStageImpl> DecoderImpl::new_stage(size_t i) const {
  const auto& ch = config_.channels;
  return std::make_shared<UpStageImpl>(ch[4 - i], ch[3 - i], config_.blocks_per_stage[3 - i]);
}

std::shared_ptr<UpStageImpl> DecoderImpl::stage(size_t i) const {
  const UpStage ups[] = {up1, up2, up3, up4};
  return ups[i].ptr();
}

void DecoderImpl::set_activation_checkpointing(bool enabled) {
  twins_.clear();
  if (!enabled) return;
  for (size_t i = 0; i < 4; ++i) twins_.push_back(make_twin(*stage(i), [&] { return new_stage(i); }));
}

DecoderOutput DecoderImpl::forward(const std::vector<at::Tensor>& f, const std::vector<at::Tensor>& tokens) {
  DecoderOutput result;
  const Segment up_step = [](nn::Module& m, const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{m.as<UpStageImpl>()->forward(in[0], in[1])};
  };
  at::Tensor out = f[0];
  for (size_t i = 0; i < 4; ++i) {
    if (i < prior_fuse->size()) {
      auto fused = prior_fuse[i]->as<FusionLayer>()->forward(out, tokens[i]);
      out = fused.first;
      // Token 0 of each class summarises the class at this scale for the head.
      result.class_tokens.push_back(fused.second.select(2, 0));
    }
    out = twins_.empty() ? stage(i)->forward(out, f[i + 1])
                         : checkpointed(up_step, stage(i), twins_[i], {out, f[i + 1]})[0];
  }
  result.features = out;
  return result;
}

}  // namespace iris::model
