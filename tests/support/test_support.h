#pragma once
// Helpers every test area shares: where the real data lives, a data check
// that fails (never skips) when set-up was not run, and error capture.
#include <filesystem>
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

}  // namespace iris::testing

// Missing data is a broken set-up, not a reason to pass: fail loudly.
#define REQUIRE_DATA(path)                                                                       \
  ASSERT_TRUE(std::filesystem::exists(path)) << "test data " << (path)                            \
                                             << " is missing: run scripts/setup.sh to install it"
