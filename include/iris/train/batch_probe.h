#pragma once
// train.micro_batch: auto — the largest number of episodes per forward and
// backward pass that fits on the device. Training keeps the asked global
// batch by accumulating gradients over several such passes.
#include <functional>
#include <string>
#include <vector>

namespace iris::train {

struct BatchProbeOptions {
  long largest = 1;          // the per-rank batch asked for: nothing above it is tried
  int steps_per_size = 2;    // a size passes when this many steps run without running out of memory
  double memory_margin = 0.1;  // ... and their peak stays below (1 - margin) of the device's memory
};

struct BatchProbeResult {
  long micro_batch = 1;
  std::vector<std::string> log;  // one line per size tried
};

// Tries sizes from `largest` down; `step(size)` runs one training step of that
// many episodes and throws on running out of memory (c10::OutOfMemoryError,
// or any error whose message says "out of memory"); other errors propagate.
// `peak_fraction()` gives the peak memory of the last steps as a fraction of
// the device's (0 where unknown, e.g. the CPU) and `reset()` clears it and the
// allocator's cache between sizes. iris::Error naming train.micro_batch when
// not even one episode fits.
BatchProbeResult probe_micro_batch(const std::function<void(long size)>& step,
                                   const std::function<double()>& peak_fraction,
                                   const std::function<void()>& reset, const BatchProbeOptions& options);

// True for the errors a device gives when it runs out of memory.
bool is_out_of_memory(const std::exception& e);

}  // namespace iris::train
