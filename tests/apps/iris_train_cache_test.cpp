// iris-train with data.cache on a real volume (the KmeansTest brain of
// insighttoolkit5-examples): --fill-cache preprocesses it once; with the raw
// files moved away (a GPU machine that only has the carried cache) training
// still runs and exports a model; without the cache it fails naming the file.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>

#include "../support/test_support.h"
#include "iris/io/image_io.h"
#include "iris/model/model_file.h"

namespace fs = std::filesystem;

namespace {

const std::string kData = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";

std::string train_program() { return iris::testing::program_path("iris-train"); }

using RunResult = iris::testing::ProgramRun;

RunResult run(const std::string& arguments, const fs::path& log) {
  return iris::testing::run_program(train_program(), arguments, log.string());
}

class IrisTrainCache : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_DATA(kData + "KmeansTest_T1UCharRaw.nii.gz");
    ASSERT_TRUE(fs::exists(train_program())) << train_program() << " not built";
    root = fs::temp_directory_path() / ("iris_train_cache_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "data");
    fs::copy_file(kData + "KmeansTest_T1UCharRaw.nii.gz", root / "data" / "t1.nii.gz");
    iris::io::Image strip = iris::io::read_labels(kData + "KmeansTest_T1RawSkullStrip.nii.gz");
    strip.voxels = strip.voxels.gt(0).to(at::kByte);
    iris::io::write_image(strip, (root / "data" / "brain.nii.gz").string());
    std::ofstream(root / "train.yaml") << "model:\n  preset: tiny\n  memory_bank_size: 2\n"
                                       << "preprocess:\n  spacing: [6, 6, 6]\n"
                                       << "train:\n  iterations: 2\n  batch: 1\n  patch: 32\n  max_classes: 1\n"
                                       << "  warmup: 1\n  checkpoint_every: 0\n  validate_every: 0\n  log_every: 1\n"
                                       << "  output_dir: " << (root / "run").string() << "\n"
                                       << "data:\n  datasets:\n    brain:\n      layout: list\n"
                                       << "      root: " << (root / "data").string() << "\n"
                                       << "      classes: [\"1:brain\"]\n      split: [1, 0, 0]\n"
                                       << "      cases: [\"t1.nii.gz|brain.nii.gz\"]\n";
  }
  void TearDown() override {
    if (!root.empty()) fs::remove_all(root);
  }
  std::string config() const { return "'" + (root / "train.yaml").string() + "'"; }
  std::string cache_flag() const { return "--set data.cache='" + (root / "cache").string() + "'"; }
  fs::path root;
};

}  // namespace

TEST_F(IrisTrainCache, TrainsFromAFilledCacheWithoutTheRawFiles) {
  const auto fill = run(config() + " " + cache_flag() + " --fill-cache", root / "fill.log");
  ASSERT_EQ(fill.exit_code, 0) << fill.output;
  EXPECT_NE(fill.output.find("1 cases cached"), std::string::npos) << fill.output;
  long entries = 0;
  for (const auto& f : fs::directory_iterator(root / "cache")) entries += f.path().extension() == ".irisvol";
  EXPECT_EQ(entries, 1);
  EXPECT_TRUE(fs::exists(root / "cache" / "datasets" / "brain.tsv"));
  EXPECT_FALSE(fs::exists(root / "run" / "model.iris"));  // filling trains nothing

  fs::rename(root / "data", root / "data_elsewhere");
  const auto without = run(config(), root / "without.log");
  EXPECT_NE(without.exit_code, 0);
  EXPECT_NE(without.output.find("t1.nii.gz"), std::string::npos) << without.output;

  const auto trained = run(config() + " " + cache_flag(), root / "train.log");
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  ASSERT_TRUE(fs::exists(root / "run" / "model.iris"));
  const auto model = iris::model::load_model((root / "run" / "model.iris").string());
  EXPECT_EQ(model.class_names, std::vector<std::string>{"brain"});
  EXPECT_NE(model.preprocess.find("spacing"), std::string::npos) << model.preprocess;
  // TensorBoard scalars next to the JSON lines.
  EXPECT_TRUE(fs::exists(root / "run" / "metrics.jsonl"));
  EXPECT_FALSE(fs::is_empty(root / "run" / "tensorboard"));
}

TEST_F(IrisTrainCache, MisspelledDataKeyIsRejectedWithASuggestion) {
  const auto r = run(config() + " --set data.cahce=x", root / "typo.log");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("did you mean 'cache'"), std::string::npos) << r.output;
}

TEST_F(IrisTrainCache, FillCacheWithoutACacheFolderIsAnError) {
  const auto r = run(config() + " --fill-cache", root / "nocache.log");
  // The library names its setting (fill_cache_only, overrides); iris-train its flags.
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("usage error: --fill-cache: needs data.cache (e.g. --set data.cache=cache/)"),
            std::string::npos)
      << r.output;
}

// Two Gloo ranks on a cold cache of four cases: each preprocesses two (its
// share), waits for the other, and neither fills anything on a warm cache.
TEST_F(IrisTrainCache, RanksFillAColdCacheTogether) {
  std::ofstream cfg(root / "two.yaml");
  cfg << "model:\n  preset: tiny\n  memory_bank_size: 2\n"
      << "preprocess:\n  spacing: [6, 6, 6]\n"
      << "train:\n  iterations: 1\n  batch: 1\n  patch: 32\n  max_classes: 1\n  distributed: gloo\n"
      << "  output_dir: " << (root / "run2").string() << "\n"
      << "data:\n  cache: " << (root / "cache2").string() << "\n  datasets:\n    brain:\n      layout: list\n"
      << "      root: " << (root / "data").string() << "\n"
      << "      classes: [\"1:brain\"]\n      split: [1, 0, 0]\n      cases: [";
  for (const char* c : {"a", "b", "c", "d"}) {
    fs::copy_file(root / "data" / "t1.nii.gz", root / "data" / (std::string(c) + ".nii.gz"));
    cfg << (c[0] == 'a' ? "" : ", ") << "\"" << c << ".nii.gz|brain.nii.gz\"";
  }
  cfg << "]\n";
  cfg.close();
  auto both = [&](const std::string& tag) {
    const int port = iris::testing::free_port();
    std::string command;
    for (int rank = 0; rank < 2; ++rank)
      command += "RANK=" + std::to_string(rank) + " WORLD_SIZE=2 LOCAL_RANK=" + std::to_string(rank) +
                 " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " OMP_NUM_THREADS=1 " +
                 iris::testing::shell_quoted(train_program()) + " " +
                 iris::testing::shell_quoted((root / "two.yaml").string()) + " --fill-cache > " +
                 iris::testing::shell_quoted((root / (tag + std::to_string(rank) + ".log")).string()) + " 2>&1" +
                 (rank == 0 ? " & " : "; r1=$?; wait $!; r0=$?; exit $((r0 | r1))");
    return std::system(("bash -c " + iris::testing::shell_quoted(command)).c_str());
  };
  auto text = [&](const std::string& name) {
    std::ifstream in(root / name);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  ASSERT_EQ(both("cold"), 0) << text("cold0.log") << text("cold1.log");
  for (const char* log : {"cold0.log", "cold1.log"})
    EXPECT_NE(text(log).find("filled 2 of the 4 cases the cache lacked"), std::string::npos) << text(log);
  long entries = 0;
  for (const auto& f : fs::directory_iterator(root / "cache2")) entries += f.path().extension() == ".irisvol";
  EXPECT_EQ(entries, 4);
  EXPECT_TRUE(!fs::exists(root / "cache2" / ".fill") || fs::is_empty(root / "cache2" / ".fill"));  // markers removed
  ASSERT_EQ(both("warm"), 0) << text("warm0.log") << text("warm1.log");
  for (const char* log : {"warm0.log", "warm1.log"}) EXPECT_EQ(text(log).find("filled"), std::string::npos) << text(log);
}
