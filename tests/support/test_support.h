#pragma once
// Helpers every test area shares: where the real data lives, a data check
// that fails (never skips) when set-up was not run, and error capture.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "iris/common/error.h"

namespace iris::testing {

// Folders of the real volumes scripts/setup.sh installs.
inline const std::string kMricronTemplates = "/usr/share/mricron/templates/";
inline const std::string kNpmModules = std::string(IRIS_TEST_DATA_DIR) + "/../third_party/npm/node_modules/";

// Runs `f`, expects iris::Error, and returns its message ("" and a test
// failure when nothing or something else is thrown).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const iris::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected iris::Error, nothing was thrown";
  return {};
}

// A built program (iris-eval, iris-train, ...): $IRIS_BIN_DIR (set by ctest)
// or the build folder the tests were configured in.
inline std::string program_path(const std::string& name) {
  const char* dir = std::getenv("IRIS_BIN_DIR");
  return std::string(dir ? dir : IRIS_BINARY_DIR) + "/" + name;
}

struct ProgramRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `program arguments` through the shell, output captured in `log`.
inline ProgramRun run_program(const std::string& program, const std::string& arguments, const std::string& log) {
  const std::string command = program + " " + arguments + " > '" + log + "' 2>&1";
  const int status = std::system(command.c_str());
  ProgramRun r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  r.output = text.str();
  return r;
}

}  // namespace iris::testing

// Missing data is a broken set-up, not a reason to pass: fail loudly.
#define REQUIRE_DATA(path)                                                                       \
  ASSERT_TRUE(std::filesystem::exists(path)) << "test data " << (path)                            \
                                             << " is missing: run scripts/setup.sh to install it"
