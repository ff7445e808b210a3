#include "iris/common/log.h"

#include <atomic>
#include <iostream>
#include <memory>
#include <mutex>

#ifdef IRIS_HAVE_SPDLOG
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#endif

namespace iris::log {

namespace {
std::atomic<Level> g_level{Level::kInfo};

#ifdef IRIS_HAVE_SPDLOG
// Messages go to stderr: stdout carries only what a user pipes (iris-eval's
// table, iris-data verify's problem list). spdlog's default logger writes to
// stdout, so iris uses its own.
spdlog::logger& logger() {
  static const std::shared_ptr<spdlog::logger> made = [] {
    auto l = spdlog::stderr_color_mt("iris");
    l->set_level(spdlog::level::trace);  // iris filters by g_level itself
    return l;
  }();
  return *made;
}
#endif

void emit(Level at, const char* tag, const std::string& message) {
  if (at < g_level.load()) return;
#ifdef IRIS_HAVE_SPDLOG
  switch (at) {
    case Level::kDebug: logger().debug(message); return;
    case Level::kInfo: logger().info(message); return;
    case Level::kWarn: logger().warn(message); return;
    default: logger().error(message); return;
  }
#else
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::cerr << "[" << tag << "] " << message << std::endl;
#endif
}
}  // namespace

void set_level(Level level) {
  g_level = level;
}

Level level() { return g_level.load(); }

void debug(const std::string& message) { emit(Level::kDebug, "debug", message); }
void info(const std::string& message) { emit(Level::kInfo, "info", message); }
void warn(const std::string& message) { emit(Level::kWarn, "warning", message); }
void error(const std::string& message) { emit(Level::kError, "error", message); }

}  // namespace iris::log
