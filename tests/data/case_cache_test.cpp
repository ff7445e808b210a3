// Training from a cache of preprocessed cases: filled through the raw loader,
// served without it (the GPU build has none), rebuilt when the raw files
// change, and case lists of folder datasets recorded for machines without
// the raw data. Plus the episode prefetcher. No ITK here.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "../support/test_support.h"
#include "iris/common/config_map.h"
#include "iris/data/case_cache.h"
#include "iris/data/episodes.h"
#include "iris/data/prefetcher.h"

namespace fs = std::filesystem;
using namespace iris;
using iris::testing::error_of;

namespace {

class CaseCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("iris_case_cache_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "raw");
    spec_.name = "toy";
    spec_.class_names = {{1, "outer"}, {2, "core"}};
    for (int i = 0; i < 2; ++i) {
      data::CaseSpec c{"case" + std::to_string(i), (dir_ / "raw" / ("img" + std::to_string(i))).string(),
                       (dir_ / "raw" / ("lab" + std::to_string(i))).string()};
      std::ofstream(c.image) << "image " << i;
      std::ofstream(c.labels) << "labels " << i;
      spec_.cases.push_back(c);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Stands in for the ITK reader + preprocessing; counts its calls.
  data::CaseLoader raw_loader() {
    return [this](const data::DatasetSpec& d, const data::CaseSpec& c) {
      ++raw_calls_;
      data::CaseVolume v;
      v.name = c.name;
      const long seed = static_cast<long>(std::hash<std::string>{}(c.name + std::to_string(fs::file_size(c.image))));
      // A generator of its own: loaders run on several threads at once.
      at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
      v.image = at::randn({6, 7, 8}, gen);
      v.labels = at::randint(0, 4, {6, 7, 8}, gen, at::kLong);  // 3 is not in the class table
      v.classes = data::classes_present(v.labels, d, c.labels);
      v.spacing = {3.0, 2.0, 1.5};
      return v;
    };
  }

  fs::path dir_;
  data::DatasetSpec spec_;
  int raw_calls_ = 0;
};

}  // namespace

TEST_F(CaseCacheTest, FillsOnceThenServesWithoutTheRawLoader) {
  data::CaseCache cache((dir_ / "cache").string(), "spacing: [3, 2, 1.5]\n");
  const auto filled = cache.loader(raw_loader())(spec_, spec_.cases[0]);
  EXPECT_EQ(raw_calls_, 1);
  EXPECT_EQ(filled.classes, (std::vector<long>{1, 2}));  // label 3 is not a class of the table
  // A build without ITK: no raw loader at all.
  const auto served = cache.loader({})(spec_, spec_.cases[0]);
  EXPECT_EQ(raw_calls_, 1);
  EXPECT_TRUE(at::equal(served.image, filled.image));
  EXPECT_TRUE(at::equal(served.labels.to(at::kLong), filled.labels));
  EXPECT_EQ(served.classes, filled.classes);
  EXPECT_EQ(served.spacing, filled.spacing);
  EXPECT_EQ(served.name, "case0");
}

// Entries hold labels in the smallest integer type and record the values
// present, so that serving a case reads no label map in full: its voxels
// are views of the mapped file.
TEST_F(CaseCacheTest, EntriesAreNarrowAndServedMappedWithTheirRecordedValues) {
  data::CaseCache cache((dir_ / "cache").string(), "spacing: [3, 2, 1.5]\n");
  const auto filled = cache.loader(raw_loader())(spec_, spec_.cases[1]);
  const std::string path = data::VolumeCache(cache.folder()).path_for(cache.key_for(spec_, spec_.cases[1]));
  const data::CachedVolume entry = data::read_cached_volume(path);
  EXPECT_EQ(entry.labels->scalar_type(), at::kByte);
  EXPECT_NE(entry.info.find("\nlabel-values: 0 1 2 3\n"), std::string::npos) << entry.info;
  const auto served = cache.loader({})(spec_, spec_.cases[1]);
  EXPECT_EQ(served.labels.scalar_type(), at::kByte);
  EXPECT_EQ(served.classes, (std::vector<long>{1, 2}));
  // Copy-on-write views of the file: writing to them leaves the entry as it was.
  served.image.fill_(0);
  EXPECT_TRUE(at::equal(data::read_cached_volume(path).voxels, filled.image.to(at::kFloat)));
}

TEST_F(CaseCacheTest, OtherPreprocessingIsAnotherEntry) {
  data::CaseCache a((dir_ / "cache").string(), "spacing: [3, 2, 1.5]\n");
  data::CaseCache b((dir_ / "cache").string(), "spacing: [1, 1, 1]\n");
  EXPECT_NE(a.key_for(spec_, spec_.cases[0]), b.key_for(spec_, spec_.cases[0]));
  EXPECT_NE(a.key_for(spec_, spec_.cases[0]), a.key_for(spec_, spec_.cases[1]));
  a.loader(raw_loader())(spec_, spec_.cases[0]);
  const std::string message = error_of([&] { b.loader({})(spec_, spec_.cases[0]); });
  EXPECT_NE(message.find("case0"), std::string::npos) << message;
  EXPECT_NE(message.find("--fill-cache"), std::string::npos) << message;
}

TEST_F(CaseCacheTest, ChangedRawFilesAreReadAgain) {
  data::CaseCache cache((dir_ / "cache").string(), "p\n");
  const auto first = cache.loader(raw_loader())(spec_, spec_.cases[0]);
  const auto written = fs::last_write_time(spec_.cases[0].image);
  std::ofstream(spec_.cases[0].image) << "a rewritten, longer image file";
  fs::last_write_time(spec_.cases[0].image, written + std::chrono::seconds(2));  // a later time, without waiting
  std::vector<std::string> warnings;
  const auto again = cache.loader(raw_loader(), [&](const std::string& w) { warnings.push_back(w); })(spec_, spec_.cases[0]);
  EXPECT_EQ(raw_calls_, 2);
  EXPECT_FALSE(at::equal(again.image, first.image));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("changed"), std::string::npos);
  // Without a raw loader a stale entry is still better than nothing, with a warning.
  std::ofstream(spec_.cases[0].image) << "rewritten again";
  warnings.clear();
  cache.loader({}, [&](const std::string& w) { warnings.push_back(w); })(spec_, spec_.cases[0]);
  EXPECT_EQ(raw_calls_, 2);
  ASSERT_EQ(warnings.size(), 1u);
}

TEST_F(CaseCacheTest, DamagedEntryIsRebuiltWithAWarning) {
  data::CaseCache cache((dir_ / "cache").string(), "p\n");
  cache.loader(raw_loader())(spec_, spec_.cases[1]);
  fs::path entry;
  for (const auto& f : fs::directory_iterator(dir_ / "cache"))
    if (f.path().extension() == ".irisvol") entry = f.path();
  ASSERT_FALSE(entry.empty());
  fs::resize_file(entry, fs::file_size(entry) / 2);
  std::vector<std::string> warnings;
  cache.loader(raw_loader(), [&](const std::string& w) { warnings.push_back(w); })(spec_, spec_.cases[1]);
  EXPECT_EQ(raw_calls_, 2);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find(entry.filename().string()), std::string::npos) << warnings[0];
}

TEST_F(CaseCacheTest, RecordedCaseListsStandInForAMissingDatasetRoot) {
  // An nnU-Net dataset declared on a machine that has only the cache.
  data::CaseCache cache((dir_ / "cache").string(), "p\n");
  data::DatasetSpec nn = spec_;
  nn.name = "Dataset001_Toy";
  nn.layout = "nnunet";
  cache.record_dataset(nn);
  ConfigMap config;
  config.set("datasets.Dataset001_Toy.layout", "nnunet");
  config.set("datasets.Dataset001_Toy.root", (dir_ / "absent").string());
  config.set("datasets.Dataset001_Toy.split", "[1, 0, 0]");
  // Without the cache the missing folder is an error...
  EXPECT_NE(error_of([&] { data::datasets_from_config(config); }).find("absent"), std::string::npos);
  // ...with it, the recorded cases and class table are used.
  auto ds = data::datasets_from_config(config, [&](const std::string& n) { return cache.recorded_dataset(n); });
  ASSERT_EQ(ds.size(), 1u);
  ASSERT_EQ(ds[0].cases.size(), 2u);
  EXPECT_EQ(ds[0].cases[1].labels, spec_.cases[1].labels);
  EXPECT_EQ(ds[0].class_names, spec_.class_names);
  EXPECT_EQ(ds[0].train.size(), 2u);
  // A damaged record names its file and line.
  std::ofstream(dir_ / "cache" / "datasets" / "Dataset001_Toy.tsv", std::ios::app) << "nonsense\n";
  const std::string message = error_of([&] { cache.recorded_dataset("Dataset001_Toy"); });
  EXPECT_NE(message.find("Dataset001_Toy.tsv"), std::string::npos) << message;
  EXPECT_NE(message.find("line 5"), std::string::npos) << message;
  // So does a class value that is no number (it used to be std::stol's "stol").
  std::ofstream(dir_ / "cache" / "datasets" / "Dataset001_Toy.tsv") << "class\tx1\tliver\n";
  const std::string bad_class = error_of([&] { cache.recorded_dataset("Dataset001_Toy"); });
  EXPECT_NE(bad_class.find("Dataset001_Toy.tsv: line 1"), std::string::npos) << bad_class;
  EXPECT_NE(bad_class.find("'x1'"), std::string::npos) << bad_class;
}

namespace {
std::vector<data::LoadedDataset> blob_datasets() {
  data::LoadedDataset d;
  d.name = "blobs";
  for (int s = 0; s < 2; ++s) {
    at::manual_seed(s);
    data::CaseVolume v;
    v.name = "b" + std::to_string(s);
    v.image = at::randn({24, 24, 24});
    v.labels = at::zeros({24, 24, 24}, at::kLong);
    v.labels.slice(0, 6 + s, 16).slice(1, 5, 17 - s).slice(2, 8, 18).fill_(1);
    v.classes = {1};
    d.cases.push_back(v);
  }
  d.class_ids = {{1, 0}};
  return {d};
}
}  // namespace

TEST(EpisodePrefetcher, WorkersReturnExactlyTheInlineBatchesInOrder) {
  data::EpisodeOptions o;
  o.patch = 16;
  o.max_classes = 1;
  const data::EpisodeSampler sampler(blob_datasets(), o, 3);
  auto produce = [&](long i) { return sampler.sample(i, 2); };
  data::EpisodePrefetcher inline_loader(produce, 0, 1), threaded(produce, 2, 3);
  EXPECT_EQ(threaded.workers(), 2);
  // 0..4 in order, then a jump as after a resume.
  for (long i : {0L, 1L, 2L, 3L, 4L, 9L, 10L}) {
    const auto a = inline_loader.get(i), b = threaded.get(i);
    EXPECT_TRUE(at::equal(a.query, b.query)) << i;
    EXPECT_TRUE(at::equal(a.reference_masks, b.reference_masks)) << i;
    EXPECT_TRUE(at::equal(a.valid, b.valid)) << i;
  }
}

TEST(EpisodePrefetcher, ProducerErrorsReachTheCaller) {
  data::EpisodePrefetcher loader(
      [](long i) -> data::EpisodeBatch {
        if (i == 2) throw Error("episode 2", "broken case");
        return {};
      },
      2, 2);
  loader.get(0);
  loader.get(1);
  EXPECT_NE(error_of([&] { loader.get(2); }).find("broken case"), std::string::npos);
}
