#include "iris/model/encoder.h"

#include <torch/nn/modules/pooling.h>

#include "iris/model/checkpointing.h"

namespace iris::model {

namespace nn = torch::nn;

StemImpl::StemImpl(long in_ch, long out_ch) {
  conv1 = register_module("conv1", nn::Conv3d(nn::Conv3dOptions(in_ch, out_ch, 3).padding(1).bias(false)));
  conv2 = register_module("conv2", ResidualBlock(out_ch, out_ch));
}

at::Tensor StemImpl::forward(const at::Tensor& x) { return conv2->forward(conv1->forward(x)); }

DownStageImpl::DownStageImpl(long in_ch, long out_ch, long blocks) {
  conv = register_module("conv", nn::Sequential());
  conv->push_back(nn::MaxPool3d(nn::MaxPool3dOptions(2)));
  conv->push_back(ResidualBlock(in_ch, out_ch));
  for (long i = 1; i < blocks; ++i) conv->push_back(ResidualBlock(out_ch, out_ch));
}

EncoderImpl::EncoderImpl(const ModelConfig& c) : config_(c) {
  inc = register_module("inc", Stem(std::static_pointer_cast<StemImpl>(new_stage(0))));
  down1 = register_module("down1", DownStage(std::static_pointer_cast<DownStageImpl>(new_stage(1))));
  down2 = register_module("down2", DownStage(std::static_pointer_cast<DownStageImpl>(new_stage(2))));
  down3 = register_module("down3", DownStage(std::static_pointer_cast<DownStageImpl>(new_stage(3))));
  down4 = register_module("down4", DownStage(std::static_pointer_cast<DownStageImpl>(new_stage(4))));
}

std::shared_ptr<nn::Module> EncoderImpl::new_stage(size_t i) const {
  const auto& ch = config_.channels;
  if (i == 0) return std::make_shared<StemImpl>(config_.in_channels, ch[0]);
  return std::make_shared<DownStageImpl>(ch[i - 1], ch[i], config_.blocks_per_stage[i - 1]);
}

std::shared_ptr<nn::Module> EncoderImpl::stage(size_t i) const {
  if (i == 0) return inc.ptr();
  const DownStage downs[] = {down1, down2, down3, down4};
  return downs[i - 1].ptr();
}

void EncoderImpl::set_activation_checkpointing(bool enabled) {
  twins_.clear();
  if (!enabled) return;
  for (size_t i = 0; i < 5; ++i) twins_.push_back(make_twin(*stage(i), [&] { return new_stage(i); }));
}

at::Tensor EncoderImpl::run_stage(size_t i, const at::Tensor& x) {
  if (twins_.empty()) return i == 0 ? inc->forward(x) : stage(i)->as<DownStageImpl>()->forward(x);
  Segment fn = [i](nn::Module& m, const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{i == 0 ? m.as<StemImpl>()->forward(in[0]) : m.as<DownStageImpl>()->forward(in[0])};
  };
  return checkpointed(fn, stage(i), twins_[i], {x})[0];
}

std::vector<at::Tensor> EncoderImpl::forward(const at::Tensor& image) {
  at::Tensor x1 = run_stage(0, image);
  at::Tensor x2 = run_stage(1, x1);
  at::Tensor x3 = run_stage(2, x2);
  at::Tensor x4 = run_stage(3, x3);
  at::Tensor x5 = run_stage(4, x4);
  return {x5, x4, x3, x2, x1};
}

}  // namespace iris::model
