#include "iris/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "iris/common/error.h"

namespace iris::train {

double learning_rate(const ScheduleOptions& s, long it) {
  if (s.warmup > 0 && it < s.warmup) return s.base_lr * (it + 1) / static_cast<double>(s.warmup);
  const double span = std::max<long>(1, s.total - s.warmup);
  const double progress = std::min(1.0, (it - s.warmup) / span);
  if (s.kind == "constant") return s.base_lr;
  if (s.kind == "warmup_exponential") return s.base_lr * std::pow(s.final_ratio, progress);
  if (s.kind == "cosine")
    return s.base_lr * (s.final_ratio + (1 - s.final_ratio) * 0.5 * (1 + std::cos(M_PI * progress)));
  throw Error("train.schedule", "unknown schedule '" + s.kind + "' (known: warmup_exponential, cosine, constant)");
}

}  // namespace iris::train
