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
  std::string config_path;  // model YAML (read_config_sections: its model: section, or model keys alone)
  std::string preset = "tiny";
  std::vector<std::string> overrides;  // model key=value
  long patch = 0;                      // 0 = the model's max_patch_size
  int batch = 1, classes = 3, queries = 1, warmup = 1, repeats = 3;
  std::string device = "cpu";          // cpu, cuda, cuda:N
  bool backward = true, forward = true, channels_last = true, activation_checkpointing = false, bf16 = false;
  long episodes = 0, volume = 160;     // episode sampling: N episodes from synthetic volume^3 cases
  // The one-shot workload (one reference encoded, one query segmented) timed
  // stage by stage (model/stage_timer.h): milliseconds per repeat and share.
  bool stages = false;
};

Json benchmark(const BenchmarkOptions& options);

// The training loader over data larger than memory (iris-bench --loader):
// synthetic cases of `shape` (z y x) in volume-cache files, loaded with a
// memory budget, then episodes of `patch`^3 with the full augmentation on
// one thread. Per case count: load time, episodes per second per core,
// cases read, peak RSS; and the RSS ratio of the largest to the smallest
// count. Cases share `distinct_files` files (they are read, and dropped,
// as distinct cases; the files may sit in the page cache).
struct LoaderBenchmarkOptions {
  std::vector<long> case_counts{16, 256};
  std::vector<long> shape{240, 320, 320};
  double memory_gb = 2.0;
  long episodes = 20, patch = 128;
  int classes = 3, distinct_files = 4;
};

Json loader_benchmark(const LoaderBenchmarkOptions& options);

}  // namespace iris::pipeline
