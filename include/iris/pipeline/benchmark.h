#pragma once
// What iris-bench measures, as reproducible JSON: parameter count, forward
// and forward+backward time and peak memory of a network configuration, the
// paper's inference workload (one reference encoded once, then queries
// segmented), and optionally the episode sampler. Ratios against the
// author's code come from tools/bench_mass.py run on the same machine.
#include <string>
#include <vector>

#include "iris/common/json.h"

namespace iris::pipeline {

struct BenchmarkOptions {
  std::string config_path;  // model YAML (its model: section); "" = preset
  std::string preset = "tiny";
  std::vector<std::string> overrides;  // model key=value
  long patch = 0;                      // 0 = the model's max_patch_size
  int batch = 1, classes = 3, queries = 1, warmup = 1, repeats = 3;
  std::string device = "cpu";          // cpu, cuda, cuda:N
  bool backward = true, forward = true, channels_last = false, activation_checkpointing = false, bf16 = false;
  long episodes = 0, volume = 160;     // episode sampling: N episodes from synthetic volume^3 cases
};

Json benchmark(const BenchmarkOptions& options);

}  // namespace iris::pipeline
