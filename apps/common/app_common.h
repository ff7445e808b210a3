#pragma once
// What every iris program shares: one place that maps errors to exit codes,
// sets up logging and torch threads.
#include <functional>
#include <string>

namespace iris::app {

// Exit codes documented in docs/cli.md.
enum ExitCode : int { kOk = 0, kFailure = 1, kUsage = 2, kBadInput = 3, kPreempted = 124 };

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
