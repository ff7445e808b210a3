#include "common/app_common.h"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#ifdef IRIS_HAVE_SPDLOG
#include <spdlog/spdlog.h>
#endif

#include "iris/common/error.h"

namespace iris::app {

int run_main(const std::string& program, const std::function<int()>& body) {
  try {
    return body();
  } catch (const CLI::ParseError& e) {
    throw;  // handled by the app's CLI11 exit()
  } catch (const iris::Error& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return kBadInput;
  } catch (const c10::Error& e) {
    std::cerr << program << ": error (torch): " << e.what_without_backtrace() << std::endl;
    return kFailure;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return kFailure;
  }
}

void configure_threads(int requested) {
  int n = requested;
  if (n <= 0)
    if (const char* env = std::getenv("IRIS_THREADS")) n = std::atoi(env);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  at::set_num_threads(n);
}

long long peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

void log_info(const std::string& message) {
#ifdef IRIS_HAVE_SPDLOG
  spdlog::info(message);
#else
  std::cerr << "[info] " << message << std::endl;
#endif
}

void log_warn(const std::string& message) {
#ifdef IRIS_HAVE_SPDLOG
  spdlog::warn(message);
#else
  std::cerr << "[warning] " << message << std::endl;
#endif
}

void set_verbose(bool verbose) {
#ifdef IRIS_HAVE_SPDLOG
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
#else
  (void)verbose;
#endif
}

}  // namespace iris::app
