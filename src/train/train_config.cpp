#include "iris/train/train_config.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <type_traits>

#include "iris/common/error.h"

namespace iris::train {

namespace {

// Each train.* key once: its name and how it is read (in this order; later
// keys may refine earlier ones, as micro_batch does batch: auto).
struct Key {
  const char* name;
  std::function<void(const ConfigMap&, const std::string&, TrainConfig&)> read;
};

template <typename T>
Key number(const char* name, T TrainConfig::*field) {
  return {name, [field](const ConfigMap& m, const std::string& k, TrainConfig& c) {
            if constexpr (std::is_floating_point_v<T>) c.*field = config_double(m, k);
            else c.*field = static_cast<T>(config_int(m, k));
          }};
}
Key text(const char* name, std::string TrainConfig::*field) {
  return {name, [field](const ConfigMap& m, const std::string& k, TrainConfig& c) { c.*field = m.get(k); }};
}
Key flag(const char* name, bool TrainConfig::*field) {
  return {name, [field](const ConfigMap& m, const std::string& k, TrainConfig& c) { c.*field = config_bool(m, k); }};
}
template <typename T>
Key episode_number(const char* name, T data::EpisodeOptions::*field) {
  return {name, [field](const ConfigMap& m, const std::string& k, TrainConfig& c) {
            if constexpr (std::is_floating_point_v<T>) c.episodes.*field = config_double(m, k);
            else c.episodes.*field = static_cast<T>(config_int(m, k));
          }};
}
template <typename T>
Key augment_number(const char* name, T data::AugmentOptions::*field) {
  return {name, [field](const ConfigMap& m, const std::string& k, TrainConfig& c) {
            c.episodes.augment.*field = static_cast<T>(config_double(m, k));
          }};
}

const std::vector<Key>& keys() {
  static const std::vector<Key> table{
      number("iterations", &TrainConfig::iterations),
      {"batch",
       [](const ConfigMap& m, const std::string& k, TrainConfig& c) {
         if (m.get(k) == "auto") c.micro_batch = -1;
         else c.batch = config_int(m, k);
       }},
      {"micro_batch",
       [](const ConfigMap& m, const std::string& k, TrainConfig& c) {
         if (m.get(k) == "auto") {
           c.micro_batch = -1;
           return;
         }
         c.micro_batch = config_int(m, k);
         if (c.micro_batch < 0) throw Error("train.micro_batch", "must be auto, 0 (the whole per-rank batch) or positive");
       }},
      number("distributed_timeout_s", &TrainConfig::distributed_timeout_s),
      episode_number("patch", &data::EpisodeOptions::patch),
      episode_number("max_classes", &data::EpisodeOptions::max_classes),
      text("optimizer", &TrainConfig::optimizer),
      number("optimizer_eps", &TrainConfig::optimizer_eps),
      number("lr", &TrainConfig::lr),
      number("warmup", &TrainConfig::warmup),
      text("schedule", &TrainConfig::schedule),
      number("final_lr_ratio", &TrainConfig::final_lr_ratio),
      number("weight_decay", &TrainConfig::weight_decay),
      number("grad_clip", &TrainConfig::grad_clip),
      number("weight_ema", &TrainConfig::weight_ema),
      flag("update_memory_bank", &TrainConfig::update_memory_bank),
      {"loss", [](const ConfigMap& m, const std::string& k,
                  TrainConfig& c) { c.loss = model::parse_region_loss(m.get(k), "train.loss"); }},
      number("dice_weight", &TrainConfig::dice_weight),
      number("bce_weight", &TrainConfig::bce_weight),
      number("checkpoint_every", &TrainConfig::checkpoint_every),
      number("keep_checkpoints", &TrainConfig::keep_checkpoints),
      number("validate_every", &TrainConfig::validate_every),
      number("validation_episodes", &TrainConfig::validation_episodes),
      number("log_every", &TrainConfig::log_every),
      text("output_dir", &TrainConfig::output_dir),
      text("init_from", &TrainConfig::init_from),
      number("seed", &TrainConfig::seed),
      text("device", &TrainConfig::device),
      flag("bf16", &TrainConfig::bf16),
      flag("activation_checkpointing", &TrainConfig::activation_checkpointing),
      flag("tensorboard", &TrainConfig::tensorboard),
      number("loader_workers", &TrainConfig::loader_workers),
      number("prefetch", &TrainConfig::prefetch),
      text("distributed", &TrainConfig::distributed),
      number("threads", &TrainConfig::threads),
      episode_number("foreground_oversample", &data::EpisodeOptions::foreground_oversample),
      episode_number("foreground_spread", &data::EpisodeOptions::foreground_spread),
      episode_number("perturb_reference", &data::EpisodeOptions::perturb_reference),
      {"augment", [](const ConfigMap& m, const std::string& k,
                     TrainConfig& c) { c.episodes.augment.enabled = config_bool(m, k); }},
      augment_number("augment_intensity_probability", &data::AugmentOptions::intensity_probability),
      augment_number("augment_rotation_degrees", &data::AugmentOptions::rotation_degrees),
      augment_number("augment_scale_min", &data::AugmentOptions::scale_min),
      augment_number("augment_scale_max", &data::AugmentOptions::scale_max),
      {"augment_mirror",
       [](const ConfigMap& m, const std::string& k, TrainConfig& c) {
         // Axes of the model space the query is mirrored along (each at 50 %):
         // the model learns to be mirror-invariant there, and iris-infer --tta
         // may flip along them (the model file records them).
         std::string axes;
         for (const auto& item : config_list_items(m.get(k))) {
           if (item != "x" && item != "y" && item != "z")
             throw Error("train.augment_mirror", "'" + item + "' is not an axis: give a list of x, y, z (e.g. [x])");
           if (axes.find(item) != std::string::npos) throw Error("train.augment_mirror", "axis " + item + " is given twice");
           axes += item;
         }
         std::sort(axes.begin(), axes.end());
         c.episodes.augment.mirror_axes = axes;
       }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& TrainConfig::known_keys() {
  static const std::vector<std::string> known = [] {
    std::vector<std::string> names;
    for (const auto& k : keys()) names.push_back(k.name);
    return names;
  }();
  return known;
}

TrainConfig TrainConfig::from_config(const ConfigMap& m) {
  ConfigMap plain;
  std::set<std::string> group_names;
  for (const auto& [k, v] : m.entries()) {
    if (k.rfind("param_groups.", 0) == 0) group_names.insert(k.substr(13, k.find('.', 13) - 13));
    else plain.set(k, v, m.origin(k));
  }
  reject_unknown_keys(plain, known_keys(), "train");
  TrainConfig c;
  for (const auto& key : keys())
    if (m.has(key.name)) key.read(m, key.name, c);
  if (c.distributed_timeout_s < 1) throw Error("train.distributed_timeout_s", "must be at least 1 second");
  for (const auto& [key, weight] : {std::pair<const char*, double>{"train.dice_weight", c.dice_weight},
                                    {"train.bce_weight", c.bce_weight}})
    if (!std::isfinite(weight) || weight < 0)
      throw Error(key, "must be a finite number >= 0 (it is " + std::to_string(weight) + ")");
  if (c.dice_weight == 0 && c.bce_weight == 0)
    throw Error("train.dice_weight", "dice_weight and bce_weight are both 0: the loss would be 0 and nothing would train");
  if (c.loader_workers < 0) throw Error("train.loader_workers", "must be >= 0");
  if (c.prefetch < 1) throw Error("train.prefetch", "must be >= 1");
  if (c.episodes.foreground_spread < 0 || c.episodes.foreground_spread > 1)
    throw Error("train.foreground_spread", "must be in [0, 1] (a fraction of the half patch)");
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
