#include "common/app_common.h"

#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "iris/common/error.h"

namespace iris::app {

void keep_freed_memory() {
#if defined(__GLIBC__)
  // Large blocks from the heap instead of their own mmap (which the kernel
  // zero-fills page by page on every allocation), and never trimmed back.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  mallopt(M_TOP_PAD, 256 << 20);
#endif
}

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



void add_device_option(CLI::App& app, std::string& device) {
  app.add_option("--device", device,
                 "cpu, cuda (this process's own GPU: cuda:LOCAL_RANK under torchrun or srun) or cuda:N");
}

void add_threads_option(CLI::App& app, int& threads) {
  app.add_option("--threads", threads, "CPU threads (default: $IRIS_THREADS, else every core)")->check(CLI::Range(0, 4096));
}

void add_config_options(CLI::App& app, std::string& config, std::vector<std::string>& overrides,
                        const std::string& what) {
  app.add_option("--config", config, what + " (YAML)");
  app.add_option("--set", overrides, "override a key of it: --set key=value (repeatable)");
}

void add_verbosity(CLI::App& app) {
  app.add_flag_callback("--quiet", [] { log::set_level(log::Level::kWarn); }, "only warnings and errors");
  app.add_flag_callback("--verbose", [] { log::set_level(log::Level::kDebug); }, "also debugging messages");
}

}  // namespace iris::app
