#pragma once
// A training run from a config file, as iris-train does it: the config
// checked, datasets found, cases read and preprocessed (through data.cache
// when set), the rank bound to its device, the communicator made, the
// trainer run. The pipeline area ties the others together for the programs;
// nothing below it includes it.
#include <functional>
#include <string>
#include <vector>

#include "iris/common/config_map.h"
#include "iris/train/trainer.h"

namespace iris::pipeline {

// A training config (YAML) with `--set key=value` overrides applied, its
// top-level and data keys checked (iris::Error naming the key, its file and
// line, with a suggestion).
ConfigMap load_training_config(const std::string& path, const std::vector<std::string>& overrides);

// The configuration as it will be used, model defaults shown in full.
std::string resolved_config_text(const ConfigMap& config);

struct TrainingRunOptions {
  bool fill_cache_only = false;  // preprocess every case into data.cache and stop
  train::ResumeMode resume = train::ResumeMode::kNone;
  // Rank 0's progress, every train.log_every steps; status lines go to log::info.
  std::function<void(const train::TrainProgress&)> progress;
};

enum class RunOutcome { kFinished, kPreempted, kCacheFilled };

RunOutcome run_training(ConfigMap config, const TrainingRunOptions& options);

}  // namespace iris::pipeline
