#include "iris/train/train_config.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "iris/common/error.h"

namespace iris::train {

const std::vector<std::string>& TrainConfig::known_keys() {
  static const std::vector<std::string> known{
      "iterations", "batch", "patch", "max_classes", "optimizer", "optimizer_eps", "lr", "warmup", "schedule", "final_lr_ratio",
      "weight_decay", "grad_clip", "weight_ema", "update_memory_bank", "loss", "dice_weight", "bce_weight",
      "checkpoint_every", "keep_checkpoints", "validate_every", "validation_episodes", "log_every", "output_dir", "init_from",
      "seed", "device", "bf16", "activation_checkpointing", "loader_workers", "prefetch", "tensorboard", "distributed", "distributed_timeout_s", "micro_batch", "threads", "foreground_oversample", "foreground_spread", "perturb_reference", "augment",
      "augment_intensity_probability", "augment_rotation_degrees", "augment_scale_min", "augment_scale_max",
      "augment_mirror"};
  return known;
}

TrainConfig TrainConfig::from_config(const ConfigMap& m) {
  const auto& known = known_keys();
  ConfigMap plain;
  std::set<std::string> group_names;
  for (const auto& [k, v] : m.entries()) {
    if (k.rfind("param_groups.", 0) == 0) group_names.insert(k.substr(13, k.find('.', 13) - 13));
    else plain.set(k, v, m.origin(k));
  }
  reject_unknown_keys(plain, known, "train");
  TrainConfig c;
  auto i = [&](const char* k, long& v) { if (m.has(k)) v = config_int(m, k); };
  auto d = [&](const char* k, double& v) { if (m.has(k)) v = config_double(m, k); };
  auto s = [&](const char* k, std::string& v) { if (m.has(k)) v = m.get(k); };
  auto b = [&](const char* k, bool& v) { if (m.has(k)) v = config_bool(m, k); };
  i("iterations", c.iterations);
  if (m.has("batch") && m.get("batch") == "auto") c.micro_batch = -1;
  else i("batch", c.batch);
  if (m.has("micro_batch")) {
    if (m.get("micro_batch") == "auto") c.micro_batch = -1;
    else {
      c.micro_batch = config_int(m, "micro_batch");
      if (c.micro_batch < 0) throw Error("train.micro_batch", "must be auto, 0 (the whole per-rank batch) or positive");
    }
  }
  i("distributed_timeout_s", c.distributed_timeout_s);
  if (c.distributed_timeout_s < 1) throw Error("train.distributed_timeout_s", "must be at least 1 second");
  i("patch", c.episodes.patch);
  i("max_classes", c.episodes.max_classes);
  s("optimizer", c.optimizer);
  d("optimizer_eps", c.optimizer_eps);
  d("lr", c.lr);
  i("warmup", c.warmup);
  s("schedule", c.schedule);
  d("final_lr_ratio", c.final_lr_ratio);
  d("weight_decay", c.weight_decay);
  d("grad_clip", c.grad_clip);
  d("weight_ema", c.weight_ema);
  b("update_memory_bank", c.update_memory_bank);
  if (m.has("loss")) c.loss = model::parse_region_loss(m.get("loss"), "train.loss");
  d("dice_weight", c.dice_weight);
  d("bce_weight", c.bce_weight);
  for (const auto& [key, weight] : {std::pair<const char*, double>{"train.dice_weight", c.dice_weight},
                                    {"train.bce_weight", c.bce_weight}})
    if (!std::isfinite(weight) || weight < 0)
      throw Error(key, "must be a finite number >= 0 (it is " + std::to_string(weight) + ")");
  if (c.dice_weight == 0 && c.bce_weight == 0)
    throw Error("train.dice_weight", "dice_weight and bce_weight are both 0: the loss would be 0 and nothing would train");
  i("checkpoint_every", c.checkpoint_every);
  i("keep_checkpoints", c.keep_checkpoints);
  i("validate_every", c.validate_every);
  i("validation_episodes", c.validation_episodes);
  i("log_every", c.log_every);
  s("output_dir", c.output_dir);
  s("init_from", c.init_from);
  i("seed", c.seed);
  s("device", c.device);
  b("bf16", c.bf16);
  b("activation_checkpointing", c.activation_checkpointing);
  b("tensorboard", c.tensorboard);
  if (m.has("loader_workers")) c.loader_workers = static_cast<int>(config_int(m, "loader_workers"));
  if (m.has("prefetch")) c.prefetch = static_cast<int>(config_int(m, "prefetch"));
  if (c.loader_workers < 0) throw Error("train.loader_workers", "must be >= 0");
  if (c.prefetch < 1) throw Error("train.prefetch", "must be >= 1");
  s("distributed", c.distributed);
  if (m.has("threads")) c.threads = static_cast<int>(config_int(m, "threads"));
  d("foreground_oversample", c.episodes.foreground_oversample);
  d("foreground_spread", c.episodes.foreground_spread);
  if (c.episodes.foreground_spread < 0 || c.episodes.foreground_spread > 1)
    throw Error("train.foreground_spread", "must be in [0, 1] (a fraction of the half patch)");
  d("perturb_reference", c.episodes.perturb_reference);
  b("augment", c.episodes.augment.enabled);
  d("augment_intensity_probability", c.episodes.augment.intensity_probability);
  d("augment_rotation_degrees", c.episodes.augment.rotation_degrees);
  d("augment_scale_min", c.episodes.augment.scale_min);
  d("augment_scale_max", c.episodes.augment.scale_max);
  if (m.has("augment_mirror")) {
    // Axes of the model space the query is mirrored along (each at 50 %):
    // the model learns to be mirror-invariant there, and iris-infer --tta
    // may flip along them (the model file records them).
    std::string axes;
    for (const auto& item : config_list_items(m.get("augment_mirror"))) {
      if (item != "x" && item != "y" && item != "z")
        throw Error("train.augment_mirror", "'" + item + "' is not an axis: give a list of x, y, z (e.g. [x])");
      if (axes.find(item) != std::string::npos) throw Error("train.augment_mirror", "axis " + item + " is given twice");
      axes += item;
    }
    std::sort(axes.begin(), axes.end());
    c.episodes.augment.mirror_axes = axes;
  }
  for (const auto& g : group_names) {
    ConfigMap gm = m.subtree("param_groups." + g);
    reject_unknown_keys(gm, {"pattern", "lr_scale", "weight_decay", "freeze"}, "param group '" + g + "'");
    ParamGroupRule r;
    r.name = g;
    if (!gm.has("pattern")) throw Error("train.param_groups." + g, "needs a 'pattern'");
    r.pattern = gm.get("pattern");
    if (gm.has("lr_scale")) r.lr_scale = config_double(gm, "lr_scale");
    if (gm.has("weight_decay")) r.weight_decay = config_double(gm, "weight_decay");
    if (gm.has("freeze")) r.freeze = config_bool(gm, "freeze");
    c.param_groups.push_back(r);
  }
  if (c.iterations < 1) throw Error("train.iterations", "must be at least 1");
  if (c.batch < 1) throw Error("train.batch", "must be at least 1");
  if (c.episodes.patch < 16 || c.episodes.patch % 16 != 0)
    throw Error("train.patch", "must be a positive multiple of 16 (it is " + std::to_string(c.episodes.patch) + ")");
  if (c.episodes.max_classes < 1) throw Error("train.max_classes", "must be at least 1");
  static const std::set<std::string> backends{"auto", "none", "gloo", "nccl"};
  if (!backends.count(c.distributed))
    throw Error("train.distributed", "unknown backend '" + c.distributed + "' (known: auto, none, gloo, nccl)");
  if (c.weight_ema < 0 || c.weight_ema >= 1) throw Error("train.weight_ema", "must be in [0, 1)");
  return c;
}

void TrainConfig::check_against(long max_patch_size) const {
  if (episodes.patch > max_patch_size)
    throw Error("train.patch", std::to_string(episodes.patch) + " is larger than the model's max_patch_size (" +
                                   std::to_string(max_patch_size) + "): the positional embedding covers at most that");
}

}  // namespace iris::train
