// scripts/gpu_check.sh is what a GPU session runs; its CPU part (--device cpu,
// tiny preset, the build under test) runs here so the script never rots:
// device tests, a Gloo training interrupted by SIGUSR1 and resumed, iris-infer
// and iris-eval on NIfTI, iris-bench, and one JSON with every step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {

std::string repo_dir() { return std::string(IRIS_TEST_DATA_DIR) + "/.."; }

std::string build_dir() {
  const char* bin = std::getenv("IRIS_BIN_DIR");
  return bin ? bin : IRIS_BINARY_DIR;
}

// scripts/gpu_check.sh OUT on CPU with the tiny preset and the build under
// test, plus `args`; `env` is put before bash (e.g. "MASTER_PORT=1234 ").
iris::testing::ProgramRun run_gpu_check(const std::string& out, const std::string& args, const std::string& log,
                                        const std::string& env = "") {
  using iris::testing::shell_quoted;
  return iris::testing::run_program(env + "bash",
                                    shell_quoted(repo_dir() + "/scripts/gpu_check.sh") + " " + shell_quoted(out) +
                                        " --device cpu --preset tiny --skip-build --build-dir " +
                                        shell_quoted(build_dir()) + args,
                                    log);
}

}  // namespace

TEST(GpuCheck, TheCpuPartRunsAndWritesOneJson) {
  const fs::path out = iris::testing::temp_folder("gpu_check");
  const auto r = run_gpu_check(out.string(), "", (out / "run.log").string(),
                               "MASTER_PORT=" + std::to_string(iris::testing::free_port()) + " ");
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
TEST(GpuCheck, TheDemoStepTrainsItsIterationsThenExportsTheModel) {
  const std::string repo = repo_dir(), build = build_dir();
  const fs::path dir = iris::testing::temp_folder("gpu_check_demo");
  const auto data = iris::testing::run_program(
      "bash", iris::testing::shell_quoted(repo + "/scripts/make_demo_data.sh") + " " + iris::testing::shell_quoted(build) +
                  " " + iris::testing::shell_quoted((dir / "data").string()),
      (dir / "data.log").string());
  ASSERT_EQ(data.exit_code, 0) << data.output;
  // Bound by iterations, never by seconds: on a loaded machine a 30-second
  // run once logged nothing and failed (the time limit is far beyond reach).
  auto check = [&](const std::string& out, const std::string& data_dir, int iterations = 24,
                   const std::string& more = "") {
    return run_gpu_check(out,
                         " --steps demo --demo-seconds 3600 --demo-iterations " + std::to_string(iterations) +
                             " --demo-init " +
                             iris::testing::shell_quoted(repo + "/models/demo_brain.iris") + " --demo-data " +
                             iris::testing::shell_quoted(data_dir) + more,
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
  EXPECT_EQ(f["train_exit"], "0") << f.dump();  // all its iterations, then the model
  ASSERT_TRUE(f.contains("iterations")) << f.dump();
  EXPECT_EQ(f["iterations"].get<int>(), 24) << f.dump();
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

  // --demo-config demo_brain_toymix.yaml: the toy cases are generated on the
  // node and read with the seven datasets (the six above and the toy).
  const fs::path mix = dir / "toymix";
  const auto t = check(mix.string(), (dir / "data").string(), 12,
                       " --demo-config " + iris::testing::shell_quoted(repo + "/configs/train/demo_brain_toymix.yaml"));
  ASSERT_TRUE(fs::exists(mix / "gpu_check.json")) << t.output;
  const auto mixed = nlohmann::json::parse(std::ifstream(mix / "gpu_check.json"));
  EXPECT_EQ(t.exit_code, 0) << t.output << "\n" << mixed.dump(2);
  EXPECT_TRUE(mixed["steps"]["demo"]["ok"].get<bool>()) << mixed.dump(2);
  std::ifstream mix_log(mix / "demo" / "train.log");
  const std::string mix_text((std::istreambuf_iterator<char>(mix_log)), {});
  EXPECT_NE(mix_text.find("loading cases: 15/15"), std::string::npos) << mix_text;  // 7 demo + 8 toy cases
  std::ifstream mix_config(mix / "demo" / "config.yaml");
  const std::string mix_yaml((std::istreambuf_iterator<char>(mix_config)), {});
  EXPECT_NE(mix_yaml.find("demo_toy"), std::string::npos) << mix_yaml;  // the toy root is the generated folder
  auto seven = six;
  seven.insert("toy");
  for (const auto& name : mixed["steps"]["demo"]["figures"]["datasets_seen"])
    EXPECT_TRUE(seven.count(name.get<std::string>())) << mixed.dump(2);

  // Without the demo data: the step fails and says what to carry.
  const fs::path missing = dir / "missing";
  const auto m = check(missing.string(), (dir / "nowhere").string());
  EXPECT_NE(m.exit_code, 0);
  EXPECT_NE(m.output.find("make_demo_data.sh"), std::string::npos) << m.output;
  const auto failed = nlohmann::json::parse(std::ifstream(missing / "gpu_check.json"));
  EXPECT_FALSE(failed["steps"]["demo"]["ok"].get<bool>()) << failed.dump(2);
  fs::remove_all(dir);
}

// The toy step (issue 17's cheapest question, whether the network learns to
// read the reference): toy cases generated, a timed training from scratch,
// the model exported, then eight one-shot passes on the two unseen cases,
// each scored. On CPU a few iterations; the Dice values need only be Dice.
TEST(GpuCheck, TheToyStepTrainsThenScoresEightOneShotPasses) {
  const fs::path out = iris::testing::temp_folder("gpu_check_toy");
  const auto r = run_gpu_check(out.string(), " --steps toy --toy-iterations 3 --toy-seconds 300",
                               (out / "run.log").string());
  ASSERT_TRUE(fs::exists(out / "gpu_check.json")) << r.output;
  const auto result = nlohmann::json::parse(std::ifstream(out / "gpu_check.json"));
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << result.dump(2);
  ASSERT_EQ(result["steps"].size(), 1u) << result.dump(2);
  const auto& toy = result["steps"]["toy"];
  EXPECT_TRUE(toy["ok"].get<bool>()) << toy.dump();
  const auto& f = toy["figures"];
  ASSERT_TRUE(f.contains("iterations") && f.contains("one_shot_dice") && f.contains("datasets_seen")) << f.dump();
  EXPECT_EQ(f["train_exit"], "0") << f.dump();  // 3 iterations end well inside the limit
  EXPECT_EQ(f["iterations"], 3) << f.dump();
  EXPECT_EQ(f["datasets_seen"], nlohmann::json::array({"toy"})) << f.dump();
  ASSERT_EQ(f["one_shot_dice"].size(), 8u) << f.dump();
  for (const char* key : {"case8_cell1", "case8_cell4", "case8_cell7", "case8_cell10", "case9_cell1", "case9_cell4",
                          "case9_cell7", "case9_cell10"}) {
    ASSERT_TRUE(f["one_shot_dice"].contains(key)) << key << ": " << f.dump();
    EXPECT_GE(f["one_shot_dice"][key].get<double>(), 0.0) << key;
    EXPECT_LE(f["one_shot_dice"][key].get<double>(), 1.0) << key;
  }
  EXPECT_TRUE(fs::exists(out / "toy" / "model.iris"));
  EXPECT_TRUE(fs::exists(out / "toy" / "metrics.jsonl"));
  fs::remove_all(out);
}

// tools/make_toy_regions.py, against its own description: the same bytes on
// every run; 40^3 voxels of 2 mm; the labelled voxels exactly the ball of
// radius 16 voxels about the centre; every one of the 12 cells present; one
// intensity per cell in [0.2, 1] with noise of sd 0.05; a different cutting
// for every case.
TEST(ToyRegions, TheGeneratorWritesWhatItSays) {
  const std::string repo = repo_dir();
  const fs::path dir = iris::testing::temp_folder("toy_regions");
  for (const char* run : {"a", "b"}) {
    const auto r = iris::testing::run_program(
        "/usr/bin/python3", iris::testing::shell_quoted(repo + "/tools/make_toy_regions.py") + " " +
                                iris::testing::shell_quoted((dir / run).string()) + " --cases 2",
        (dir / (std::string(run) + ".log")).string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  for (const char* name : {"case0.nii.gz", "case0_lab.nii.gz", "case1.nii.gz", "case1_lab.nii.gz"}) {
    ASSERT_TRUE(fs::exists(dir / "a" / name)) << name;
    EXPECT_TRUE(bytes(dir / "a" / name) == bytes(dir / "b" / name)) << name << " differs between two runs";
  }
  std::vector<at::Tensor> cuttings;
  for (int c = 0; c < 2; ++c) {
    const auto base = (dir / "a" / ("case" + std::to_string(c))).string();
    const auto image = iris::io::read_image(base + ".nii.gz");
    const auto labels = iris::io::read_labels(base + "_lab.nii.gz");
    ASSERT_EQ(labels.voxels.sizes(), at::IntArrayRef({40, 40, 40}));
    for (int a = 0; a < 3; ++a) EXPECT_NEAR(labels.geometry.spacing[a], 2.0, 1e-6);
    const auto lab = labels.voxels.to(at::kLong).contiguous();
    const auto img = image.voxels.to(at::kDouble).contiguous();
    const auto* l = lab.data_ptr<int64_t>();
    const auto* v = img.data_ptr<double>();
    std::vector<double> sum(13, 0.0), sq(13, 0.0);
    std::vector<long> count(13, 0);
    long outside_ball_labelled = 0, inside_ball_unlabelled = 0;
    for (int z = 0; z < 40; ++z)
      for (int y = 0; y < 40; ++y)
        for (int x = 0; x < 40; ++x) {
          const long i = (static_cast<long>(z) * 40 + y) * 40 + x;
          const double d2 = (x - 19.5) * (x - 19.5) + (y - 19.5) * (y - 19.5) + (z - 19.5) * (z - 19.5);
          const bool inside = d2 <= 256.0;
          ASSERT_GE(l[i], 0);
          ASSERT_LE(l[i], 12);
          if (inside && l[i] == 0) ++inside_ball_unlabelled;
          if (!inside && l[i] != 0) ++outside_ball_labelled;
          sum[l[i]] += v[i];
          sq[l[i]] += v[i] * v[i];
          ++count[l[i]];
        }
    EXPECT_EQ(inside_ball_unlabelled, 0) << "case " << c;
    EXPECT_EQ(outside_ball_labelled, 0) << "case " << c;
    for (int k = 0; k <= 12; ++k) {
      ASSERT_GT(count[k], 50) << "case " << c << " cell " << k;
      const double mean = sum[k] / count[k];
      const double sd = std::sqrt(sq[k] / count[k] - mean * mean);
      if (k == 0) {
        EXPECT_NEAR(mean, 0.0, 0.01) << "background, case " << c;
      } else {
        EXPECT_GE(mean, 0.2 - 0.01) << "case " << c << " cell " << k;
        EXPECT_LE(mean, 1.0 + 0.01) << "case " << c << " cell " << k;
      }
      EXPECT_NEAR(sd, 0.05, 0.01) << "case " << c << " cell " << k;
    }
    cuttings.push_back(lab);
  }
  // Seeds differ per case: most voxels of the ball carry another label.
  const double same = (cuttings[0] == cuttings[1]).logical_and(cuttings[0] > 0).sum().item<double>() /
                      (cuttings[0] > 0).sum().item<double>();
  EXPECT_LT(same, 0.5);
  fs::remove_all(dir);
}
