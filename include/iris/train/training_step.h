#pragma once
// The named parts of one training step, shared by Trainer::step and the test
// that holds a whole step against the author's code
// (tests/train/mass_train_step_test.cpp): the episode forward, the loss
// settings, the parameter groups and the weight EMA. Gradient clipping and
// the Lamb update are in optimizer.h.
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

#include "iris/model/iris_net.h"
#include "iris/model/losses.h"
#include "iris/train/optimizer.h"
#include "iris/train/train_config.h"

namespace iris::train {

struct EpisodeForward {
  at::Tensor logits;                // [B, K, D, H, W], float32
  std::vector<at::Tensor> tokens;   // task tokens per prior stage (for the memory bank)
};

// Reference -> task tokens, query -> logits, as training runs them: only the
// network runs under bf16 autocast (when `bf16`); the logits come back in
// float32 (float64 for a float64 network) so that loss and backward stay there.
EpisodeForward episode_forward(model::IrisNetImpl& net, const at::Tensor& query, const at::Tensor& reference,
                               const at::Tensor& reference_masks, bool bf16);

// The loss settings of a training config (train.loss, dice_weight, bce_weight).
model::LossWeights loss_weights(const TrainConfig& config);

// Parameters grouped by `rules` (first match in the alphabetical order of
// rule names; unmatched: the default group with `weight_decay`). Frozen
// parameters get requires_grad false and join no group. Empty groups are
// dropped. `trainable` (optional) receives every parameter that trains.
std::vector<ParamGroup> make_param_groups(const std::vector<std::pair<std::string, at::Tensor>>& named_parameters,
                                          std::vector<ParamGroupRule> rules, double weight_decay,
                                          std::vector<at::Tensor>* trainable = nullptr);

// ema = decay * ema + (1 - decay) * param, pairwise (the author's weight EMA).
void update_weight_ema(std::vector<at::Tensor>& ema, const std::vector<at::Tensor>& params, double decay);

}  // namespace iris::train
