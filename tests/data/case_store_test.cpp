// Training data larger than memory: the case store keeps a bounded set of
// cases, an episode is cut from the patch's footprint only, and sampling
// from cases read on demand gives exactly the episodes of cases in memory.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <random>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "iris/data/case_cache.h"
#include "iris/data/case_store.h"
#include "iris/data/episodes.h"

using namespace iris;

namespace {

data::CaseVolume blob_case(int seed, long size = 40) {
  // A generator of its own: loaders call this from several threads at once.
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  data::CaseVolume v;
  v.name = "case" + std::to_string(seed);
  v.dataset = "blobs";
  v.image = at::randn({size, size + 3, size - 2}, gen);
  v.labels = at::zeros({size, size + 3, size - 2}, at::kLong);
  v.labels.slice(0, 5 + seed % 4, 20).slice(1, 6, 24 - seed % 3).slice(2, 4, 18).fill_(1);
  v.labels.slice(0, 22, 30).slice(1, 20 + seed % 5, 35).slice(2, 20, 30).fill_(2);
  v.labels[3][4][5] = 3;  // a one-voxel class
  v.classes = {1, 2, 3};
  return v;
}

// A line of /proc/self/status in bytes (VmRSS, VmHWM).
long long status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

}  // namespace

TEST(CaseIndex, BoxesCountsAndLocationsAgreeWithTheLabels) {
  data::CaseVolume v = blob_case(1);
  data::index_case(v, /*max_samples=*/50);
  EXPECT_EQ(v.shape, (std::array<long, 3>{40, 43, 38}));
  for (long c : v.classes) {
    const auto& l = v.locations.at(c);
    const at::Tensor mask = v.labels.eq(c);
    EXPECT_EQ(l.count, mask.sum().item<long>()) << c;
    EXPECT_LE(l.voxels.size(0), 50) << c;
    EXPECT_TRUE(l.voxels.is_contiguous()) << c;  // read through data_ptr
    const at::Tensor idx = at::nonzero(mask);
    for (int a = 0; a < 3; ++a) {
      EXPECT_EQ(l.lo[a], idx.select(1, a).min().item<long>()) << c;
      EXPECT_EQ(l.hi[a], idx.select(1, a).max().item<long>()) << c;
    }
    // Every stored location is a voxel of the class.
    for (long i = 0; i < l.voxels.size(0); ++i) {
      const auto row = l.voxels[i];
      EXPECT_EQ(v.labels[row[0].item<long>()][row[1].item<long>()][row[2].item<long>()].item<long>(), c);
    }
  }
  // Spread over the class, not its first rows: the sample spans the class's z range.
  const auto& big = v.locations.at(1);
  EXPECT_EQ(big.voxels.select(1, 0).min().item<int>(), big.lo[0]);
  EXPECT_EQ(big.voxels.select(1, 0).max().item<int>(), big.hi[0]);
}

TEST(CasePatch, EqualsSamplingTheWholeVolume) {
  data::CaseVolume v = blob_case(2);
  data::index_case(v);
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-0.3, 0.3);
  const std::vector<std::vector<long>> tasks{{1}, {2, 3}};
  // The image trilinearly, the label map at the nearest voxel, then the masks.
  auto whole_patch = [&](const std::array<double, 3>& c, const std::array<double, 9>& m, const at::Tensor& d) {
    const at::Tensor labels = data::sample_patch(v.labels.unsqueeze(0), c, m, 16, d, /*nearest*/ true)[0];
    return at::cat({data::sample_patch(v.image.unsqueeze(0), c, m, 16, d), labels.eq(1).to(at::kFloat).unsqueeze(0),
                    (labels.eq(2) | labels.eq(3)).to(at::kFloat).unsqueeze(0)});
  };
  // Centres inside, at the border and outside the volume; rotated, scaled.
  const std::vector<std::array<double, 3>> centres{{20, 21, 19}, {0, 0, 0}, {39, 42, 37}, {-10, 20, 5}, {60, 60, 60}};
  for (const auto& c : centres) {
    const double s = 1 + u(rng), a = u(rng);
    const std::array<double, 9> m{s * std::cos(a), -s * std::sin(a), 0, s * std::sin(a), s * std::cos(a), 0, 0, 0, s};
    const at::Tensor expected = whole_patch(c, m, {});
    const at::Tensor got = data::case_patch(v, v.image, tasks, c, m, 16);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT((got - expected).abs().max().item<float>(), 1e-4) << c[0] << "," << c[1] << "," << c[2];
  }
  // With a displacement: the footprint widens by its largest value.
  at::manual_seed(0);
  const at::Tensor d = at::rand({16 * 16 * 16, 3}) * 6 - 3;
  const std::array<double, 9> identity{1, 0, 0, 0, 1, 0, 0, 0, 1};
  const at::Tensor expected = whole_patch({20, 20, 20}, identity, d);
  EXPECT_LT((data::case_patch(v, v.image, tasks, {20, 20, 20}, identity, 16, d, 3.0) - expected).abs().max().item<float>(),
            1e-4);
}

TEST(CaseStore, KeepsTheMostRecentCasesWithinItsBudget) {
  std::atomic<int> reads{0};
  const size_t one = data::case_bytes(blob_case(0));
  data::CaseStore store(
      [&](size_t i) {
        ++reads;
        return blob_case(static_cast<int>(i));
      },
      2 * one + one / 2);  // room for two cases
  for (size_t i = 0; i < 6; ++i) store.get(i);
  EXPECT_EQ(reads.load(), 6);
  EXPECT_EQ(store.resident_cases(), 2u);
  EXPECT_LE(store.resident_bytes(), 2 * one + one / 2);
  store.get(5);  // resident: no read
  store.get(4);
  EXPECT_EQ(reads.load(), 6);
  store.get(0);  // dropped long ago: read again
  EXPECT_EQ(reads.load(), 7);
  // A case in use survives being dropped from the store.
  auto held = store.get(1);
  for (size_t i = 2; i < 6; ++i) store.get(i);
  EXPECT_TRUE(at::equal(held->image, blob_case(1).image));
  // Threads reading at once get the right cases.
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 20; ++k) {
        const size_t i = (t * 7 + k) % 9;
        if (!at::equal(store.get(i)->labels, blob_case(static_cast<int>(i)).labels)) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(store.resident_cases(), 3u);
}

TEST(CaseStore, EpisodesFromCasesReadOnDemandEqualEpisodesFromMemory) {
  data::DatasetSpec spec;
  spec.name = "blobs";
  for (int i = 0; i < 12; ++i) {
    data::CaseSpec c;
    c.name = "case" + std::to_string(i);
    spec.train.push_back(c);
  }
  std::atomic<int> reads{0};
  data::CaseLoader loader = [&](const data::DatasetSpec&, const data::CaseSpec& c) {
    ++reads;
    return blob_case(std::stoi(c.name.substr(4)));
  };
  data::LoadOptions all_in_memory;
  all_in_memory.threads = 3;
  data::LoadOptions bounded;
  bounded.memory_budget_bytes = 3 * data::case_bytes(blob_case(0));  // labels narrow to uint8: a bit more fits
  bounded.threads = 2;
  long progress_calls = 0;
  bounded.progress = [&](long done, long total) {
    ++progress_calls;
    EXPECT_EQ(total, 12);
    EXPECT_LE(done, total);
  };
  auto memory_sets = data::load_datasets({spec}, "train", loader, all_in_memory);
  auto bounded_sets = data::load_datasets({spec}, "train", loader, bounded);
  EXPECT_EQ(progress_calls, 12);
  ASSERT_TRUE(bounded_sets[0].store);
  EXPECT_FALSE(bounded_sets[0].cases[0].image.defined());  // only the description stays
  EXPECT_EQ(memory_sets[0].cases[0].labels.scalar_type(), at::kByte);  // the smallest type
  auto store = bounded_sets[0].store;
  data::EpisodeOptions o;
  o.patch = 16;
  o.max_classes = 2;
  const data::EpisodeSampler in_memory(memory_sets, o, 11), on_demand(bounded_sets, o, 11);
  double valid = 0;
  for (long i = 0; i < 15; ++i) {
    const auto a = in_memory.sample(i, 2), b = on_demand.sample(i, 2);
    valid += a.valid.sum().item<double>();
    EXPECT_TRUE(at::equal(a.query, b.query)) << i << ": max difference " << (a.query - b.query).abs().max().item<double>();
    EXPECT_TRUE(at::equal(a.reference_masks, b.reference_masks)) << i;
    EXPECT_TRUE(at::equal(a.valid, b.valid)) << i;
  }
  EXPECT_GT(valid, 10) << "the episodes must hold tasks for the comparison to mean something";
  EXPECT_LE(store->resident_bytes(), bounded.memory_budget_bytes);
  EXPECT_GT(store->loads(), 3u);  // cases were dropped and read again
}


// The loader's memory does not grow with the dataset: 64 cases in a
// data.cache folder (4 distinct volumes, the others hard links to them),
// a budget of 4 cases, 200 episodes spread over all of them. Keeping every
// case, read or mapped, would add ~1.5 GB; the bound is 4 cases and slack.
TEST(CaseStore, SixtyFourCachedCasesWithABudgetOfFourKeepTheRssBounded) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("iris_rss_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const long Z = 128, Y = 192, X = 192;
  const data::CaseCache cache((dir / "cache").string(), "rss test");
  data::DatasetSpec spec;
  spec.name = "many";
  for (int i = 0; i < 64; ++i) {
    data::CaseSpec c;
    c.name = std::to_string(i);
    c.image = (dir / ("raw" + c.name)).string();  // never read
    c.labels = (dir / ("lab" + c.name)).string();
    spec.train.push_back(c);
  }
  const data::CaseLoader make = [&](const data::DatasetSpec&, const data::CaseSpec& c) {
    at::Generator gen = at::detail::createCPUGenerator(std::stoul(c.name));
    data::CaseVolume v;
    v.name = c.name;
    v.image = at::randn({Z, Y, X}, gen);
    v.labels = at::zeros({Z, Y, X}, at::kByte);
    v.labels.slice(0, 20, 60).slice(1, 30, 90).slice(2, 40, 100).fill_(1);
    v.labels.slice(0, 70, 110).slice(1, 100, 150).slice(2, 60, 120).fill_(2);
    return v;
  };
  const data::VolumeCache files(cache.folder());
  for (int i = 0; i < 64; ++i) {
    if (i < 4)
      cache.loader(make)(spec, spec.train[i]);
    else
      fs::create_hard_link(files.path_for(cache.key_for(spec, spec.train[i % 4])),
                           files.path_for(cache.key_for(spec, spec.train[i])));
  }
  const long long one_case = Z * Y * X * 5;  // float image, uint8 labels
  const long long before = status_bytes("VmRSS");
  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
  data::LoadOptions bounded;
  bounded.memory_budget_bytes = static_cast<size_t>(4 * one_case);
  auto sets = data::load_datasets({spec}, "train", cache.loader(nullptr), bounded);
  auto store = sets[0].store;
  ASSERT_TRUE(store);
  data::EpisodeOptions o;
  o.patch = 32;
  o.max_classes = 2;
  const data::EpisodeSampler sampler(std::move(sets), o, 3);
  double valid = 0;
  for (long i = 0; i < 200; ++i) valid += sampler.sample(i, 1).valid.sum().item<double>();
  const long long growth = status_bytes("VmHWM") - before;
  EXPECT_GT(valid, 100);
  EXPECT_GT(store->loads(), 64u) << "the episodes should have cycled through the cases";
  EXPECT_LE(store->resident_cases(), 4u);
  EXPECT_LT(growth, 4 * one_case + (150ll << 20)) << "peak RSS grew by " << (growth >> 20) << " MB";
  fs::remove_all(dir);
}
