#include "common/app_common.h"

#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
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
    std::cerr << program << ": usage error: " << e.what() << std::endl;
    return kUsage;
  } catch (const iris::Error& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return kBadInput;
  } catch (const std::filesystem::filesystem_error& e) {
    // Folders made or moved by the library: name the path and say what happened.
    const int code = e.code().value();
    std::cerr << program << ": error: " << e.path1().string() << ": "
              << (code == ENOSPC || code == EDQUOT ? std::string("no space left on the device") : e.code().message())
              << std::endl;
    return kBadInput;
  } catch (const c10::Error& e) {
    std::cerr << program << ": error (torch): " << e.what_without_backtrace() << std::endl;
    return kFailure;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return kFailure;
  }
}

int exit_for(CLI::App& app, const CLI::ParseError& error) {
  const int code = app.exit(error);
  return code == 0 ? kOk : kUsage;
}

namespace {
// CLI11 hands validators the text; parse it as strictly as the option will.
bool parse_number(const std::string& text, double& value) {
  try {
    size_t used = 0;
    value = std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace

CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        if (!parse_number(text, v) || !std::isfinite(v)) return "'" + text + "' is not a finite number";
        return "";
      },
      "FINITE");
}

CLI::Validator number_in(double low, double high) {
  return CLI::Validator(
      [low, high](std::string& text) -> std::string {
        double v = 0;
        if (!parse_number(text, v) || !std::isfinite(v) || v < low || v > high)
          return "'" + text + "' is not a number from " + CLI::detail::to_string(low) + " to " +
                 CLI::detail::to_string(high);
        return "";
      },
      "[" + CLI::detail::to_string(low) + " - " + CLI::detail::to_string(high) + "]");
}

CLI::Validator at_least(double low) {
  return CLI::Validator(
      [low](std::string& text) -> std::string {
        double v = 0;
        if (!parse_number(text, v) || !std::isfinite(v) || v < low)
          return "'" + text + "' is not a number >= " + CLI::detail::to_string(low);
        return "";
      },
      ">=" + CLI::detail::to_string(low));
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
