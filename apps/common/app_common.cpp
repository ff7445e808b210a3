#include "common/app_common.h"

#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <regex>
#include <new>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "iris/common/setting_error.h"

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

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char text[32];
  if (s < 60) std::snprintf(text, sizeof text, "%ld s", s);
  else if (s < 3600) std::snprintf(text, sizeof text, "%ld min %02ld s", s / 60, s % 60);
  else std::snprintf(text, sizeof text, "%ld h %02ld min", s / 3600, (s % 3600) / 60);
  return text;
}

namespace {
std::map<std::string, std::string>& setting_flags() {
  static std::map<std::string, std::string> flags;
  return flags;
}
}  // namespace

void name_settings(std::initializer_list<std::pair<const char*, const char*>> pairs) {
  for (const auto& [setting, flag] : pairs) setting_flags()[setting] = flag;
}

std::string flag_of(const std::string& setting) {
  const auto it = setting_flags().find(setting);
  return it == setting_flags().end() ? setting : it->second;
}

namespace {
std::string& memory_settings() {
  static std::string settings;
  return settings;
}

// "you tried to allocate 4294967296 bytes" (CPU), "Tried to allocate 2.00 GiB" (CUDA): the size asked, as "4.3 GB".
std::string size_asked(const std::string& what) {
  std::smatch m;
  if (std::regex_search(what, m, std::regex(R"(allocate (\d+) bytes)"))) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GB", std::stod(m[1].str()) / 1e9);
    return text;
  }
  if (std::regex_search(what, m, std::regex(R"([Tt]ried to allocate ([0-9.]+ [KMGT]i?B))"))) return m[1].str();
  return "";
}
}  // namespace

void name_memory_settings(const std::string& settings) { memory_settings() = settings; }

int run_main(const std::string& program, const std::function<int()>& body) {
  install_write_signal_handlers();
  // Every message of this process, reports and warnings too, names settings as its flags.
  iris::setting_namer() = flag_of;
  try {
    return body();
  } catch (const CLI::ParseError& e) {
    std::cerr << program << ": usage error: " << e.what() << std::endl;
    return kUsage;
  } catch (const iris::InternalError& e) {
    std::cerr << program << ": error: " << e.what() << std::endl;
    return kFailure;
  } catch (const iris::SettingsNamingError& e) {
    // A setting (what() names it as this program's flag): a usage error. A file: bad input.
    std::cerr << program << (e.about_setting() ? ": usage error: " : ": error: ") << e.what() << std::endl;
    return e.about_setting() ? kUsage : kBadInput;
  } catch (const iris::Error& e) {
    // A flag that is missing, malformed or in conflict is a usage error,
    // whichever check found it (CLI11's or the library's).
    if (e.where().rfind("--", 0) == 0) {
      std::cerr << program << ": usage error: " << e.what() << std::endl;
      return kUsage;
    }
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
    const std::string what = e.what_without_backtrace();
    if (what.find("alloc_cpu") != std::string::npos || what.find("can't allocate memory") != std::string::npos ||
        what.find("out of memory") != std::string::npos) {
      // The allocator's text names no setting: say what this program's memory grows with.
      const std::string size = size_asked(what);
      std::cerr << program << ": error: out of memory"
                << (size.empty() ? std::string() : ": " + size + " asked for and refused") << "; "
                << (memory_settings().empty() ? std::string("the inputs are too large for this machine")
                                              : "the memory grows with " + memory_settings())
                << std::endl;
      log::debug(what);
    } else
      std::cerr << program << ": error (torch): " << what << std::endl;
    return kFailure;
  } catch (const std::bad_alloc&) {
    std::cerr << program << ": error: out of memory (an input, model or setting asks for more memory than this "
              << "machine allows)" << std::endl;
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
  name_settings({{"device", "--device"}});
}

void add_threads_option(CLI::App& app, int& threads) {
  app.add_option("--threads", threads, "CPU threads (default: $IRIS_THREADS, else every core)")->check(CLI::Range(0, 4096));
}

void add_config_options(CLI::App& app, std::string& config, std::vector<std::string>& overrides,
                        const std::vector<std::string>& sections, const std::string& what) {
  std::string listed, keys;
  for (const auto& s : sections) {
    listed += (listed.empty() ? "" : sections.size() > 1 && &s == &sections.back() ? " and " : ", ") + s + ":";
    keys += (keys.empty() ? "" : ", ") + s + ".KEY=VALUE";
  }
  app.add_option("--config", config,
                 "YAML with " + listed + (sections.size() > 1 ? " sections" : " section") +
                     " (a training config will do), or " + sections.front() +
                     " keys alone: " + what);
  app.add_option("--set", overrides,
                 "override a key: --set " + keys + ", or KEY=VALUE for a " + sections.front() + " key (repeatable)");
  name_settings({{"config", "--config"}, {"overrides", "--set"}});
}

void add_verbosity(CLI::App& app) {
  app.add_flag_callback("--quiet", [] { log::set_level(log::Level::kWarn); }, "only warnings and errors");
  app.add_flag_callback("--verbose", [] { log::set_level(log::Level::kDebug); }, "also debugging messages");
}

}  // namespace iris::app
