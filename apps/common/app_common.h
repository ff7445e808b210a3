#pragma once
// What every iris program shares: one place that maps errors to exit codes,
// sets up logging and torch threads.
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace iris::app {

// Exit codes documented in docs/cli.md.
enum ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2, kBadInput = 3, kPreempted = 124 };

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
// file), CLI errors (exit 2) and anything else (exit 1), printing one line.
int run_main(const std::string& program, const std::function<int()>& body);

// Torch intra-op threads: `requested` > 0, else $IRIS_THREADS, else all cores.
// (LibTorch defaults to one thread on Debian.)
void configure_threads(int requested = 0);

// Peak resident memory of this process (VmHWM), bytes; 0 where unknown.
long long peak_rss_bytes();

void log_info(const std::string& message);
void log_warn(const std::string& message);
void set_verbose(bool verbose);

}  // namespace iris::app
