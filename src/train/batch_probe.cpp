#include "iris/train/batch_probe.h"

#include <cstdio>

#include <c10/util/Exception.h>

#include "iris/common/error.h"

namespace iris::train {

bool is_out_of_memory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e)) return true;
  const std::string what = e.what();
  return what.find("out of memory") != std::string::npos || what.find("CUBLAS_STATUS_ALLOC_FAILED") != std::string::npos;
}

BatchProbeResult probe_micro_batch(const std::function<void(long)>& step, const std::function<double()>& peak_fraction,
                                   const std::function<void()>& reset, const BatchProbeOptions& o) {
  if (o.largest < 1) throw Error("train.micro_batch", "nothing to probe: the per-rank batch is below 1");
  if (o.steps_per_size < 1) throw Error("train.micro_batch", "needs at least one probing step per size");
  BatchProbeResult result;
  for (long size = o.largest; size >= 1; --size) {
    reset();
    std::string outcome;
    try {
      for (int s = 0; s < o.steps_per_size; ++s) step(size);
      const double peak = peak_fraction();
      char text[96];
      std::snprintf(text, sizeof text, "fits, peak %.0f%% of device memory", 100.0 * peak);
      outcome = text;
      if (peak <= 1.0 - o.memory_margin) {
        result.log.push_back("micro-batch " + std::to_string(size) + ": " + outcome);
        result.micro_batch = size;
        reset();
        return result;
      }
      outcome += ", above the safety margin";
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      outcome = "out of memory";
    }
    result.log.push_back("micro-batch " + std::to_string(size) + ": " + outcome);
  }
  reset();
  throw Error("train.micro_batch", "not even one episode per pass fits on the device (tried " +
                                       std::to_string(o.largest) + " down to 1): use a smaller train.patch or model, "
                                       "train.bf16: true or train.activation_checkpointing: true");
}

}  // namespace iris::train
