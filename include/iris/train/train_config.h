#pragma once
// Training settings (the train.* keys of a config), with the paper's recipe
// as defaults: Lamb, lr 2e-3, 2 K warm-up, exponential decay, weight decay
// 1e-5, 80 K iterations, batch 32, grad clip 1.0, weight EMA 0.99.
#include <string>
#include <vector>

#include "iris/common/config_map.h"
#include "iris/data/episodes.h"
#include "iris/model/losses.h"

namespace iris::train {

// Parameters whose name matches `pattern` (ECMAScript regex, searched) get
// this group's settings; groups are tried in the alphabetical order of their
// names and the first match wins; unmatched parameters use the defaults.
struct ParamGroupRule {
  std::string name, pattern;
  double lr_scale = 1.0;
  double weight_decay = -1.0;  // < 0: the global weight decay
  bool freeze = false;
};

struct TrainConfig {
  long iterations = 80000;
  long batch = 32;  // global: split evenly across ranks
  // Episodes per forward/backward pass on each rank: 0 = the whole per-rank
  // batch in one pass; N = passes of N with gradients accumulated to the same
  // global batch; -1 ("auto") = the largest that fits on the device, probed
  // at the start of the run (batch_probe.h). `batch: auto` means the default
  // global batch with micro_batch auto.
  long micro_batch = 0;
  std::string optimizer = "lamb";
  double optimizer_eps = 1e-6;  // Adam/Lamb denominator epsilon
  double lr = 2e-3;
  long warmup = 2000;
  std::string schedule = "warmup_exponential";
  double final_lr_ratio = 0.01;
  double weight_decay = 1e-5;
  double grad_clip = 1.0;
  double weight_ema = 0.99;  // 0 disables the EMA copy of the weights
  bool update_memory_bank = true;
  // train.loss: the region term added to BCE (losses.h); dice_weight weighs
  // it, whichever it is. See docs/training.md for the choice of default.
  model::RegionLoss loss = model::RegionLoss::soft_dice;
  double dice_weight = 1.0, bce_weight = 1.0;
  long checkpoint_every = 1000;
  long keep_checkpoints = 3;
  long validate_every = 1000;
  long validation_episodes = 8;
  long log_every = 10;
  std::string output_dir = "runs/iris";
  // Start from these weights (an .iris model file, e.g. the previous stage of
  // transfer learning) instead of a random initialisation; "" = random.
  std::string init_from;
  long seed = 0;
  std::string device = "cpu";
  bool bf16 = false;  // bf16 autocast of the forward pass (CUDA; CPU works too, slowly)
  bool activation_checkpointing = false;  // recompute encoder/decoder stages in backward
  int loader_workers = 1;  // episode-sampling threads (0: sample on the training thread)
  int prefetch = 2;        // batches prepared ahead of the step
  bool tensorboard = true; // also write TensorBoard scalars under output_dir/tensorboard
  std::string distributed = "auto";  // auto | none | gloo | nccl (named: collectives run even on one rank)
  long distributed_timeout_s = 600;   // a collective waiting longer ends the run with an error
  int threads = 0;
  std::vector<ParamGroupRule> param_groups;
  data::EpisodeOptions episodes;

  static TrainConfig from_config(const ConfigMap& train);
  // The train.* keys from_config reads (param_groups.* aside).
  static const std::vector<std::string>& known_keys();
  // Checks that need the model: the patch against model.max_patch_size.
  void check_against(long max_patch_size) const;
};

}  // namespace iris::train
