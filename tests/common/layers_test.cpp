// The areas point one way (docs/architecture.md): each may include only the
// areas below it. Read off the sources themselves, so a new include that
// breaks the rule fails here, naming the file and line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

namespace fs = std::filesystem;

TEST(Layers, EveryAreaIncludesOnlyTheAreasBelowIt) {
  const std::map<std::string, std::set<std::string>> allowed{
      {"common", {"common"}},
      {"model", {"common", "model"}},
      {"io", {"common", "io"}},
      {"data", {"common", "data"}},
      {"train", {"common", "model", "data", "train"}},
      {"infer", {"common", "model", "io", "data", "infer"}},
      {"eval", {"common", "io", "eval"}},
      {"pipeline", {"common", "model", "io", "data", "train", "infer", "eval", "pipeline"}},
  };
  const fs::path root = fs::path(IRIS_TEST_DATA_DIR) / "..";
  const std::regex include(R"re(^\s*#\s*include\s*"iris/([a-z]+)/)re");
  long checked = 0;
  std::string violations;
  for (const auto& [area, may] : allowed) {
    for (const fs::path dir : {root / "src" / area, root / "include" / "iris" / area}) {
      ASSERT_TRUE(fs::is_directory(dir)) << dir;
      for (const auto& e : fs::recursive_directory_iterator(dir)) {
        if (!e.is_regular_file()) continue;
        std::ifstream in(e.path());
        std::string line;
        long number = 0;
        while (std::getline(in, line)) {
          ++number;
          std::smatch m;
          if (!std::regex_search(line, m, include)) continue;
          ++checked;
          if (!may.count(m[1].str()))
            violations += "\n  " + fs::relative(e.path(), root).string() + ":" + std::to_string(number) + " (" + area +
                          ") includes iris/" + m[1].str() + "/";
        }
      }
    }
  }
  EXPECT_GT(checked, 100);
  EXPECT_TRUE(violations.empty()) << "includes against the layer rules:" << violations;
}

// Missing data or a missing tool must fail a test, never skip it quietly
// (REQUIRE_DATA in tests/support/test_support.h): no test skips itself but
// those that need a GPU, without one.
TEST(Layers, NoTestSkipsItself) {
  const fs::path root = fs::path(IRIS_TEST_DATA_DIR) / "..";
  const std::string skip = std::string("GTEST_") + "SKIP";
  std::string found;
  long files = 0;
  for (const auto& e : fs::recursive_directory_iterator(root / "tests")) {
    if (!e.is_regular_file() || (e.path().extension() != ".cpp" && e.path().extension() != ".h")) continue;
    ++files;
    std::ifstream in(e.path());
    std::string line;
    long number = 0;
    while (std::getline(in, line))
      if (++number, line.find(skip) != std::string::npos)
        found += "\n  " + fs::relative(e.path(), root).string() + ":" + std::to_string(number);
  }
  EXPECT_GT(files, 30);
  // The one exception: the tests that need a GPU skip, with the reason, where
  // there is none (one macro, IRIS_REQUIRE_DEVICE); ctest counts them as
  // skipped (SKIP_REGULAR_EXPRESSION in cmake/IrisTargets.cmake).
  const std::string allowed = "\n  tests/device/device_test.cpp:";
  const size_t at = found.find(allowed);
  ASSERT_NE(at, std::string::npos) << "the GPU tests no longer skip without a GPU:" << found;
  found.erase(at, found.find('\n', at + 1) == std::string::npos ? std::string::npos : found.find('\n', at + 1) - at);
  EXPECT_TRUE(found.empty()) << "tests that skip themselves:" << found;
}
