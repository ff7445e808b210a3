#pragma once
// Where a forward pass spends its time, stage by stage (iris-bench --stages).
// A StageTimer alive on a thread collects the wall seconds of every
// StageScope opened on that thread, summed per stage name; with no timer a
// scope costs one thread-local read. Scopes mark whole stages of the
// network (encoder, task encoding, fusion attention, upsampling, decoder
// convolutions, head) and are never nested, so the stages add up to the pass.
#include <chrono>
#include <functional>
#include <map>
#include <string>

namespace iris::model {

class StageTimer {
 public:
  // `synchronize` runs before each clock reading (a CUDA device synchronise,
  // so that a stage's kernels are counted in it); may be empty.
  explicit StageTimer(std::function<void()> synchronize = {});
  ~StageTimer();
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

  const std::map<std::string, double>& seconds() const { return seconds_; }
  void clear() { seconds_.clear(); }

  static StageTimer* current();  // this thread's, or nullptr
  void synchronize() const;
  void add(const char* stage, double seconds) { seconds_[stage] += seconds; }

 private:
  std::function<void()> synchronize_;
  std::map<std::string, double> seconds_;
  StageTimer* previous_;
};

class StageScope {
 public:
  explicit StageScope(const char* stage);
  ~StageScope();
  StageScope(const StageScope&) = delete;
  StageScope& operator=(const StageScope&) = delete;

 private:
  StageTimer* timer_;
  const char* stage_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace iris::model
