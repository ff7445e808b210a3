#include "iris/model/stage_timer.h"

namespace iris::model {

namespace {
thread_local StageTimer* current_timer = nullptr;
}

StageTimer::StageTimer(std::function<void()> synchronize)
    : synchronize_(std::move(synchronize)), previous_(current_timer) {
  current_timer = this;
}

StageTimer::~StageTimer() { current_timer = previous_; }

StageTimer* StageTimer::current() { return current_timer; }

void StageTimer::synchronize() const {
  if (synchronize_) synchronize_();
}

StageScope::StageScope(const char* stage) : timer_(current_timer), stage_(stage) {
  if (!timer_) return;
  timer_->synchronize();
  start_ = std::chrono::steady_clock::now();
}

StageScope::~StageScope() {
  if (!timer_) return;
  timer_->synchronize();
  timer_->add(stage_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
}

}  // namespace iris::model
