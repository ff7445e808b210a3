#pragma once
// What every iris program shares: one place that maps errors to exit codes,
// sets up logging and torch threads.
#include <functional>
#include <initializer_list>
#include <utility>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "iris/common/device.h"
#include "iris/common/log.h"

namespace iris::app {

// Exit codes documented in docs/cli.md.
// kSomeFailed: several inputs, some could not be done (each named), the
// others are done.
enum ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2, kBadInput = 3, kSomeFailed = 4, kPreempted = 124 };

// Prints CLI11's message for a parse error (or the help) and returns the
// exit code of docs/cli.md: 0 for --help, 2 for any usage error.
int exit_for(CLI::App& app, const CLI::ParseError& error);

// Parses the command line; on a usage error returns from main with exit code 2.
#define IRIS_PARSE(cli_app, argc, argv)                   \
  try {                                                   \
    (cli_app).parse((argc), (argv));                      \
  } catch (const CLI::ParseError& parse_error) {          \
    return ::iris::app::exit_for((cli_app), parse_error); \
  }

// Validators for numbers: CLI11's own let NaN through.
CLI::Validator finite_number();
CLI::Validator number_in(double low, double high);  // finite, low <= x <= high
CLI::Validator at_least(double low);                // finite, x >= low

// Runs body(); catches iris::Error (bad input: exit 3, message names the
// file; an error about a flag, WHERE "--name", or about a setting, an
// iris::SettingError: a usage error, exit 2; an internal error: exit 1), CLI
// errors (exit 2) and anything else (exit 1), printing one line. Settings
// are shown as this program's flags (name_settings).
int run_main(const std::string& program, const std::function<int()>& body);

// The library's errors name settings (iris/common/setting_error.h), the
// program's messages name its flags: {"pool_dir", "--pool"} makes
// "pool_dir: only with strategy retrieval" read "--pool: only with
// --strategy retrieval", in errors, reports and warnings alike (run_main
// installs flag_of as iris::setting_namer). Declared next to the flags; a
// setting this program has no flag for keeps its name.
void name_settings(std::initializer_list<std::pair<const char*, const char*>> setting_flags);
// The flag for `setting` in this program, or the setting's name.
std::string flag_of(const std::string& setting);

// What decides this program's memory, for the message when an allocation is
// refused ("--window, --window-batch and --classes-per-pass"): the
// allocator's own text names no setting.
void name_memory_settings(const std::string& settings);

// Torch intra-op threads (common/device.h).
using iris::configure_threads;

using iris::peak_rss_bytes;

// Keeps freed memory in the process (glibc: no mmap per large block, no trim)
// so that a CPU forward pass does not page-fault its activations in anew on
// every call (the timings: docs/inference.md, docs/training.md). Memory
// once used stays with the process until it exits: for programs whose peak
// is their working set (iris-infer, iris-bench, iris-train: the training
// loader maps cached cases from data.cache instead of allocating them, so
// its heap holds only per-episode transients and its RSS still follows
// data.cache_memory_gb).
void keep_freed_memory();

// The options every program spells the same way.
void add_device_option(CLI::App& app, std::string& device);
void add_threads_option(CLI::App& app, int& threads);
// --config FILE and --set KEY=VALUE, read by read_config_sections
// (iris/common/config_map.h) with these `sections`, the first taking bare keys.
void add_config_options(CLI::App& app, std::string& config, std::vector<std::string>& overrides,
                        const std::vector<std::string>& sections, const std::string& what);

// --quiet (warnings and errors only) and --verbose (debug messages) on `app`.
void add_verbosity(CLI::App& app);

// One status line, composed with << and logged (log::info) when it goes out
// of scope: app::Info() << "wrote " << path;
class Info {
 public:
  ~Info() { log::info(text_.str()); }
  template <typename T>
  Info& operator<<(const T& value) {
    text_ << value;
    return *this;
  }

 private:
  std::ostringstream text_;
};

// "12 s", "3 min 05 s", "1 h 02 min": a time left for a progress line.
std::string format_duration(double seconds);

// Progress bars are drawn only at the info level (not with --quiet).
inline bool show_progress() { return log::level() <= log::Level::kInfo; }

}  // namespace iris::app
