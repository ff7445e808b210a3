#include "iris/model/encoder.h"

#include <torch/nn/modules/pooling.h>

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

EncoderImpl::EncoderImpl(const ModelConfig& c) {
  const auto& ch = c.channels;
  const auto& nb = c.blocks_per_stage;
  inc = register_module("inc", Stem(c.in_channels, ch[0]));
  down1 = register_module("down1", DownStage(ch[0], ch[1], nb[0]));
  down2 = register_module("down2", DownStage(ch[1], ch[2], nb[1]));
  down3 = register_module("down3", DownStage(ch[2], ch[3], nb[2]));
  down4 = register_module("down4", DownStage(ch[3], ch[4], nb[3]));
}

std::vector<at::Tensor> EncoderImpl::forward(const at::Tensor& image) {
  at::Tensor x1 = inc->forward(image);
  at::Tensor x2 = down1->forward(x1);
  at::Tensor x3 = down2->forward(x2);
  at::Tensor x4 = down3->forward(x3);
  at::Tensor x5 = down4->forward(x4);
  return {x5, x4, x3, x2, x1};
}

}  // namespace iris::model
