#include "iris/common/log.h"

#include <atomic>
#include <iostream>
#include <mutex>

#ifdef IRIS_HAVE_SPDLOG
#include <spdlog/spdlog.h>
#endif

namespace iris::log {

namespace {
std::atomic<Level> g_level{Level::kInfo};

void emit(Level at, const char* tag, const std::string& message) {
  if (at < g_level.load()) return;
#ifdef IRIS_HAVE_SPDLOG
  switch (at) {
    case Level::kDebug: spdlog::debug(message); return;
    case Level::kInfo: spdlog::info(message); return;
    case Level::kWarn: spdlog::warn(message); return;
    default: spdlog::error(message); return;
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
#ifdef IRIS_HAVE_SPDLOG
  spdlog::set_level(level == Level::kDebug  ? spdlog::level::debug
                    : level == Level::kInfo ? spdlog::level::info
                    : level == Level::kWarn ? spdlog::level::warn
                    : level == Level::kError ? spdlog::level::err
                                             : spdlog::level::off);
#endif
}

Level level() { return g_level.load(); }

void debug(const std::string& message) { emit(Level::kDebug, "debug", message); }
void info(const std::string& message) { emit(Level::kInfo, "info", message); }
void warn(const std::string& message) { emit(Level::kWarn, "warning", message); }
void error(const std::string& message) { emit(Level::kError, "error", message); }

}  // namespace iris::log
