// scripts/gpu_check.sh is what a GPU session runs; its CPU part (--device cpu,
// tiny preset, the build under test) runs here so the script never rots:
// device tests, a Gloo training interrupted by SIGUSR1 and resumed, iris-infer
// and iris-eval on NIfTI, iris-bench, and one JSON with every step.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

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

// The demo step (issue 17's training on a GPU): the clean demo config trained
// for at most --demo-seconds from a model of its architecture, cut by
// SIGUSR1, the checkpoint exported; the model and metrics come back. On CPU
// it is cut after a few iterations of 1000.
TEST(GpuCheck, TheDemoStepTrainsForItsTimeThenExportsTheModel) {
  const std::string repo = std::string(IRIS_TEST_DATA_DIR) + "/..";
  const char* bin = std::getenv("IRIS_BIN_DIR");
  const std::string build = bin ? bin : IRIS_BINARY_DIR;
  const fs::path dir = iris::testing::temp_folder("gpu_check_demo");
  const auto data = iris::testing::run_program(
      "bash", iris::testing::shell_quoted(repo + "/scripts/make_demo_data.sh") + " " + iris::testing::shell_quoted(build) +
                  " " + iris::testing::shell_quoted((dir / "data").string()),
      (dir / "data.log").string());
  ASSERT_EQ(data.exit_code, 0) << data.output;
  auto check = [&](const std::string& out, const std::string& data_dir) {
    return iris::testing::run_program(
        "bash", iris::testing::shell_quoted(repo + "/scripts/gpu_check.sh") + " " + iris::testing::shell_quoted(out) +
                    " --device cpu --preset tiny --skip-build --build-dir " + iris::testing::shell_quoted(build) +
                    " --steps demo --demo-seconds 30 --demo-iterations 1000 --demo-init " +
                    iris::testing::shell_quoted(repo + "/models/demo_brain.iris") + " --demo-data " +
                    iris::testing::shell_quoted(data_dir),
        out + ".log");
  };
  const fs::path out = dir / "out";
  const auto r = check(out.string(), (dir / "data").string());
  ASSERT_TRUE(fs::exists(out / "gpu_check.json")) << r.output;
  const auto result = nlohmann::json::parse(std::ifstream(out / "gpu_check.json"));
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << result.dump(2);
  ASSERT_EQ(result["steps"].size(), 1u) << result.dump(2);  // only the step asked for
  const auto& demo = result["steps"]["demo"];
  EXPECT_TRUE(demo["ok"].get<bool>()) << demo.dump();
  const auto& f = demo["figures"];
  EXPECT_EQ(f["train_exit"], "124") << f.dump();  // cut by the time limit
  EXPECT_EQ(f["export_exit"], "0") << f.dump();
  ASSERT_TRUE(f.contains("iterations")) << f.dump();
  EXPECT_GT(f["iterations"].get<int>(), 0) << f.dump();
  EXPECT_LT(f["iterations"].get<int>(), 1000) << f.dump();
  EXPECT_GE(std::stoi(f["exported_at_iteration"].get<std::string>()), f["iterations"].get<int>()) << f.dump();
  // A few dozen episodes need not draw all six datasets: those logged are the config's.
  const std::set<std::string> six = {"brain", "structures", "atlas_aal", "atlas_aicha", "atlas_brodmann", "atlas_jhu"};
  ASSERT_GE(f["datasets_seen"].size(), 2u) << f.dump();
  for (const auto& name : f["datasets_seen"]) EXPECT_TRUE(six.count(name.get<std::string>())) << f.dump();
  EXPECT_FALSE(f["dice_loss_by_dataset_last_tenth"].empty()) << f.dump();
  ASSERT_TRUE(fs::exists(out / "demo" / "model.iris")) << r.output;
  EXPECT_GT(fs::file_size(out / "demo" / "model.iris"), 1000000u);
  EXPECT_TRUE(fs::exists(out / "demo" / "metrics.jsonl"));
  // The exported model is the run's: its description names the run's folder.
  std::ifstream model(out / "demo" / "model.iris", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(model)), {});
  EXPECT_NE(bytes.find("demo_run"), std::string::npos);

  // Without the demo data: the step fails and says what to carry.
  const fs::path missing = dir / "missing";
  const auto m = check(missing.string(), (dir / "nowhere").string());
  EXPECT_NE(m.exit_code, 0);
  EXPECT_NE(m.output.find("make_demo_data.sh"), std::string::npos) << m.output;
  const auto failed = nlohmann::json::parse(std::ifstream(missing / "gpu_check.json"));
  EXPECT_FALSE(failed["steps"]["demo"]["ok"].get<bool>()) << failed.dump(2);
  fs::remove_all(dir);
}
