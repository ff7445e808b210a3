#pragma once
// Learning-rate schedules as pure functions of the iteration.
#include <string>

namespace iris::train {

struct ScheduleOptions {
  std::string kind = "warmup_exponential";  // warmup_exponential | cosine | constant
  double base_lr = 2e-3;
  long warmup = 2000;        // linear warm-up iterations
  long total = 80000;        // iterations of the run
  double final_ratio = 0.01; // lr at the end relative to base (exponential and cosine)
};

// Learning rate at `iteration` (0-based).
double learning_rate(const ScheduleOptions& s, long iteration);

}  // namespace iris::train
