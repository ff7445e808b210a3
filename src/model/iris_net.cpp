#include "iris/model/iris_net.h"

#include <torch/nn/init.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "iris/model/stage_timer.h"

namespace iris::model {

IrisNetImpl::IrisNetImpl(const ModelConfig& config) : config_(config) {
  config_.validate();
  encoder = register_module("encoder", Encoder(config_));
  decoder = register_module("decoder", Decoder(config_));
  task_embedding = register_module("task_embedding", torch::nn::ModuleList());
  for (long i = 0; i < config_.prior_stages; ++i) {
    at::Tensor bank = torch::empty({config_.memory_bank_size, config_.tokens_per_class(), config_.stage_channels(i)});
    torch::nn::init::xavier_uniform_(bank);
    memory_bank.push_back(register_buffer("task_prior_" + std::to_string(i), bank));
    task_embedding->push_back(TaskEncoder(config_, i));
  }
  out = register_module("out", SegmentationHead(config_.head_input_dim(), config_.channels[0]));
}

void IrisNetImpl::check_input(const at::Tensor& image, const char* what) const {
  if (image.dim() != 5)
    throw Error(what, "expected a [batch, channel, D, H, W] tensor, got " + std::to_string(image.dim()) + " dimensions");
  if (image.size(1) != config_.in_channels)
    throw Error(what, "expected " + std::to_string(config_.in_channels) + " channel(s), got " + std::to_string(image.size(1)));
  for (int a = 2; a < 5; ++a) {
    if (image.size(a) % 16 != 0 || image.size(a) == 0)
      throw Error(what, "spatial size " + std::to_string(image.size(a)) + " is not a positive multiple of 16 (four 2x poolings)");
    if (image.size(a) > config_.max_patch_size)
      throw Error(what, "spatial size " + std::to_string(image.size(a)) + " exceeds the model's patch size " +
                            std::to_string(config_.max_patch_size) + ": use a sliding window");
  }
}

void IrisNetImpl::set_channels_last(bool enabled) {
  channels_last_ = enabled;
  const auto format = enabled ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  torch::NoGradGuard no_grad;
  for (auto& p : parameters())
    if (p.dim() == 5) p.set_data(p.data().contiguous(format));
}

void IrisNetImpl::set_activation_checkpointing(bool enabled) {
  activation_checkpointing_ = enabled;
  encoder->set_activation_checkpointing(enabled);
  decoder->set_activation_checkpointing(enabled);
}

std::vector<at::Tensor> IrisNetImpl::encode_image(const at::Tensor& image) {
  check_input(image, "image");
  StageScope scope("encoder");
  return encoder->forward(channels_last_ ? image.contiguous(at::MemoryFormat::ChannelsLast3d) : image);
}

std::vector<at::Tensor> IrisNetImpl::encode_task_tokens(const std::vector<at::Tensor>& features,
                                                        const at::Tensor& masks) {
  if (masks.dim() != 5) internal_error("IrisNet::encode_task_tokens", "masks expected [batch, classes, D, H, W]");
  StageScope scope("task encoding");
  std::vector<at::Tensor> tokens;
  for (long i = 0; i < config_.prior_stages; ++i)
    tokens.push_back(task_embedding[i]->as<TaskEncoder>()->forward(features[i], masks));
  return tokens;
}

at::Tensor IrisNetImpl::decode(const std::vector<at::Tensor>& features, const std::vector<at::Tensor>& tokens) {
  if (static_cast<long>(tokens.size()) != config_.prior_stages)
    throw Error("task embedding", "has " + std::to_string(tokens.size()) + " stages, the model expects " +
                                      std::to_string(config_.prior_stages));
  const long B = features[0].size(0);
  std::vector<at::Tensor> batched;
  for (long i = 0; i < config_.prior_stages; ++i) {
    at::Tensor t = tokens[i];
    if (t.dim() == 3) t = t.unsqueeze(0).expand({B, -1, -1, -1});
    if (t.dim() != 4 || t.size(-1) != config_.stage_channels(i) || t.size(-2) != config_.tokens_per_class())
      throw Error("task embedding", "stage " + std::to_string(i) + " tokens do not fit this model's architecture");
    batched.push_back(t.to(features[0].scalar_type()));
  }
  DecoderOutput d = decoder->forward(features, batched);
  if (is_training() && config_.dropout > 0) d.features = at::feature_dropout(d.features, config_.dropout, true);
  StageScope scope("head");
  return out->forward(d.features, d.class_tokens);
}

at::Tensor IrisNetImpl::forward(const at::Tensor& query, const at::Tensor& reference, const at::Tensor& masks) {
  auto query_features = encode_image(query);
  auto reference_features = encode_image(reference);
  return decode(query_features, encode_task_tokens(reference_features, masks));
}

std::vector<at::Tensor> IrisNetImpl::memory_bank_tokens(const at::Tensor& class_ids) const {
  const long n = config_.memory_bank_size;
  if (class_ids.numel() > 0 && (class_ids.min().item<long>() < 0 || class_ids.max().item<long>() >= n))
    throw Error("memory bank", "class id out of range [0, " + std::to_string(n) + ")");
  std::vector<at::Tensor> out;
  for (const auto& bank : memory_bank) out.push_back(bank.index({class_ids.to(bank.device(), at::kLong)}));
  return out;
}

void IrisNetImpl::update_memory_bank(const std::vector<at::Tensor>& tokens, const at::Tensor& class_ids) {
  torch::NoGradGuard no_grad;
  const double m = config_.ema_momentum;
  at::Tensor ids = class_ids.to(at::kLong).reshape({-1}).to(memory_bank[0].device());
  at::Tensor valid = ids.ge(0) & ids.lt(config_.memory_bank_size);
  at::Tensor chosen = ids.masked_select(valid);
  if (chosen.numel() == 0) return;
  for (size_t i = 0; i < memory_bank.size(); ++i) {
    at::Tensor t = tokens[i].detach().reshape({-1, tokens[i].size(-2), tokens[i].size(-1)});
    t = t.index({valid}).to(memory_bank[i].scalar_type());
    // Sequential per entry, as the author's loop does, so a class seen twice in
    // one batch is updated twice.
    for (long j = 0; j < chosen.size(0); ++j) {
      const long id = chosen[j].item<long>();
      memory_bank[i][id].mul_(m).add_(t[j], 1.0 - m);
    }
  }
}

long count_parameters(const torch::nn::Module& module) {
  long n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace iris::model
