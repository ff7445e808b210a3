// iris-bench times the network in the layout iris-infer and iris-train run
// (channels-last), unless told --channels-first, and says which in its JSON.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "iris/common/json.h"
#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {

nlohmann::json bench(const std::string& flags, const fs::path& dir) {
  const std::string bench = iris::testing::program_path("iris-bench");
  EXPECT_TRUE(fs::exists(bench)) << bench << " not built";
  fs::remove(dir / "bench.json");  // a run that writes nothing must not be read as the one before
  const auto r = iris::testing::run_program(
      bench,
      "--preset tiny --patch 16 --classes 1 --repeats 1 --warmup 0 --no-forward --no-backward --threads 1 --quiet "
      "--output " + (dir / "bench.json").string() + " " + flags,
      (dir / "bench.log").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(std::ifstream(dir / "bench.json"));
}

}  // namespace

TEST(Bench, TimesTheLayoutTheProgramsRunUnlessToldOtherwise) {
  const fs::path dir = iris::testing::temp_folder("bench_layout");
  EXPECT_TRUE(bench("", dir)["channels_last"].get<bool>());
  EXPECT_TRUE(bench("--channels-last", dir)["channels_last"].get<bool>());
  EXPECT_FALSE(bench("--channels-first", dir)["channels_last"].get<bool>());
  fs::remove_all(dir);
}
