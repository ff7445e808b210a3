#include "iris/train/training_step.h"

#include <algorithm>
#include <regex>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::train {

EpisodeForward episode_forward(model::IrisNetImpl& net, const at::Tensor& query, const at::Tensor& reference,
                               const at::Tensor& reference_masks, bool bf16) {
  EpisodeForward out;
  {
    compat::AutocastGuard autocast(query.device().type(), at::kBFloat16, bf16);
    const auto reference_features = net.encode_image(reference);
    out.tokens = net.encode_task_tokens(reference_features, reference_masks);
    out.logits = net.decode(net.encode_image(query), out.tokens);
  }
  if (out.logits.scalar_type() != at::kDouble) out.logits = out.logits.to(at::kFloat);
  return out;
}

model::LossWeights loss_weights(const TrainConfig& config) {
  model::LossWeights w;
  w.region = config.loss;
  w.dice = config.dice_weight;
  w.bce = config.bce_weight;
  return w;
}

std::vector<ParamGroup> make_param_groups(const std::vector<std::pair<std::string, at::Tensor>>& named_parameters,
                                          std::vector<ParamGroupRule> rules, double weight_decay,
                                          std::vector<at::Tensor>* trainable) {
  std::sort(rules.begin(), rules.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::vector<std::regex> patterns;
  for (const auto& r : rules) {
    try {
      patterns.emplace_back(r.pattern);
    } catch (const std::regex_error&) {
      throw Error("train.param_groups." + r.name + ".pattern", "not a valid regular expression: " + r.pattern);
    }
  }
  std::vector<ParamGroup> groups(rules.size() + 1);
  groups.back().name = "default";
  groups.back().weight_decay = weight_decay;
  for (size_t i = 0; i < rules.size(); ++i) {
    groups[i].name = rules[i].name;
    groups[i].lr_scale = rules[i].lr_scale;
    groups[i].weight_decay = rules[i].weight_decay >= 0 ? rules[i].weight_decay : weight_decay;
  }
  for (const auto& [name, param] : named_parameters) {
    size_t g = rules.size();
    for (size_t i = 0; i < rules.size(); ++i)
      if (std::regex_search(name, patterns[i])) {
        g = i;
        break;
      }
    at::Tensor p = param;
    if (g < rules.size() && rules[g].freeze) {
      p.set_requires_grad(false);
      continue;
    }
    groups[g].params.push_back(p);
    groups[g].param_names.push_back(name);
    if (trainable) trainable->push_back(p);
  }
  std::vector<ParamGroup> nonempty;
  for (auto& g : groups)
    if (!g.params.empty()) nonempty.push_back(std::move(g));
  return nonempty;
}

void update_weight_ema(std::vector<at::Tensor>& ema, const std::vector<at::Tensor>& params, double decay) {
  if (ema.size() != params.size()) internal_error("weight EMA", "EMA and parameters differ in count");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < ema.size(); ++i) ema[i].mul_(decay).add_(params[i].detach(), 1 - decay);
}

}  // namespace iris::train
