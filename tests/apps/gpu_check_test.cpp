// scripts/gpu_check.sh is what a GPU session runs; its CPU part (--device cpu,
// tiny preset, the build under test) runs here so the script never rots:
// device tests, a Gloo training interrupted by SIGUSR1 and resumed, iris-infer
// and iris-eval on NIfTI, iris-bench, and one JSON with every step.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace fs = std::filesystem;

TEST(GpuCheck, TheCpuPartRunsAndWritesOneJson) {
  const std::string repo = std::string(IRIS_TEST_DATA_DIR) + "/..";
  const char* bin = std::getenv("IRIS_BIN_DIR");
  const std::string build = bin ? bin : IRIS_BINARY_DIR;
  const fs::path out = iris::testing::temp_folder("gpu_check");
  const auto r = iris::testing::run_program(
      "MASTER_PORT=" + std::to_string(iris::testing::free_port()) + " bash",
      iris::testing::shell_quoted(repo + "/scripts/gpu_check.sh") + " " + iris::testing::shell_quoted(out.string()) +
          " --device cpu --preset tiny --skip-build --build-dir " + iris::testing::shell_quoted(build),
      (out / "run.log").string());
  ASSERT_TRUE(fs::exists(out / "gpu_check.json")) << r.output;
  const auto result = nlohmann::json::parse(std::ifstream(out / "gpu_check.json"));
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << result.dump(2);
  for (const char* step : {"build", "tests", "train", "infer", "bench"}) {
    ASSERT_TRUE(result["steps"].contains(step)) << step;
    EXPECT_TRUE(result["steps"][step]["ok"].get<bool>()) << step << ": " << result["steps"][step].dump();
  }
  const auto& train = result["steps"]["train"]["figures"];
  EXPECT_EQ(train["first_exit"], 124) << train.dump();  // SIGUSR1: checkpoint, then exit 124
  EXPECT_EQ(train["resume_exit"], 0) << train.dump();
  EXPECT_EQ(train["iterations"], 8) << train.dump();    // stopped and resumed, every iteration once
  EXPECT_LT(train["stopped_after"].get<int>(), 8) << train.dump();
  // validate_every is half the iterations: validation after steps 4 and 8
  // (one validation case), on the device and backend under test.
  ASSERT_EQ(train["val_dice"].size(), 2u) << train.dump();
  EXPECT_EQ(train["val_dice"][0][0], 3) << train.dump();
  EXPECT_EQ(train["val_dice"][1][0], 7) << train.dump();
  for (const auto& v : train["val_dice"]) {
    ASSERT_TRUE(v[1].is_number()) << train.dump();
    EXPECT_GE(v[1].get<double>(), 0.0) << train.dump();
    EXPECT_LE(v[1].get<double>(), 1.0) << train.dump();
  }
  EXPECT_GT(result["steps"]["tests"]["figures"]["tests"].get<int>(), 0);
  EXPECT_TRUE(result["steps"]["bench"]["figures"]["iris"].contains("forward_backward"));
  EXPECT_TRUE(result["steps"]["infer"]["figures"].contains("dice")) << result["steps"]["infer"].dump();
  fs::remove_all(out);
}
