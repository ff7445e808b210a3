// The on-disk volume cache: bit-exact round trips, keys, concurrent writers
// and damaged files. No ITK here: this runs in the GPU-only build too.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <csignal>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/data/volume_cache.h"

namespace fs = std::filesystem;
using iris::data::CachedVolume;
using iris::data::VolumeCache;

namespace {

const std::string kTemplates = "/usr/share/mricron/templates/";

class VolumeCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("iris_cache_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static CachedVolume sample(int64_t seed, bool with_labels = true) {
    at::manual_seed(seed);
    CachedVolume v;
    v.voxels = at::randn({7, 9, 11});  // z, y, x
    v.geometry.size = {11, 9, 7};
    v.geometry.spacing = {1.5, 1.5, 1.5 + 1e-13};  // tiny decimals must survive
    v.geometry.origin = {-90.25, 126.0 / 3.0, -72.0};
    v.geometry.direction = {0.6, -0.8, 0, 0.8, 0.6, 0, 0, 0, 1};
    if (with_labels) v.labels = at::randint(0, 5, {7, 9, 11}, at::kInt);
    v.info = "source: ch2.nii.gz\nspacing: [1.5, 1.5, 1.5]\n";
    return v;
  }

  static void expect_identical(const CachedVolume& a, const CachedVolume& b) {
    EXPECT_EQ(a.voxels.scalar_type(), b.voxels.scalar_type());
    EXPECT_TRUE(at::equal(a.voxels, b.voxels));  // bit-exact (no NaN in the samples)
    EXPECT_EQ(a.geometry.size, b.geometry.size);
    EXPECT_EQ(a.geometry.spacing, b.geometry.spacing);
    EXPECT_EQ(a.geometry.origin, b.geometry.origin);
    EXPECT_EQ(a.geometry.direction, b.geometry.direction);
    ASSERT_EQ(a.labels.has_value(), b.labels.has_value());
    if (a.labels) EXPECT_TRUE(at::equal(*a.labels, *b.labels));
    EXPECT_EQ(a.info, b.info);
  }

  fs::path dir_;
};

TEST_F(VolumeCacheTest, RoundTripIsBitExact) {
  VolumeCache cache(dir_.string());
  EXPECT_TRUE(fs::is_directory(dir_));
  EXPECT_FALSE(cache.get("abc").has_value());
  const CachedVolume v = sample(1);
  cache.put("abc", v);
  EXPECT_TRUE(cache.contains("abc"));
  const auto back = cache.get("abc");
  ASSERT_TRUE(back.has_value());
  expect_identical(v, *back);
  // Other dtypes and a [C,Z,Y,X] tensor without labels.
  for (auto dtype : {at::kByte, at::kShort, at::kInt, at::kDouble}) {
    CachedVolume w = sample(2, false);
    w.voxels = (at::stack({w.voxels, -w.voxels}) * 20).to(dtype);
    cache.put("multi", w);
    const auto r = cache.get("multi");
    ASSERT_TRUE(r.has_value());
    expect_identical(w, *r);
  }
  // No stray temporary files after writes.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.path().extension() == ".irisvol" ? 1 : 100;
  EXPECT_EQ(files, 2);
}

TEST_F(VolumeCacheTest, RefusesVoxelsThatDoNotMatchTheGeometry) {
  VolumeCache cache(dir_.string());
  CachedVolume v = sample(3);
  v.geometry.size = {9, 11, 7};
  EXPECT_THROW(cache.put("bad", v), iris::Error);
  EXPECT_FALSE(cache.contains("bad"));
  EXPECT_THROW(cache.path_for("../escape"), iris::Error);
}

TEST_F(VolumeCacheTest, KeysFollowContentConfigAndModification) {
  const std::string ch2 = kTemplates + "ch2.nii.gz";
  ASSERT_TRUE(fs::exists(ch2)) << ch2 << " is missing: run scripts/setup.sh";
  fs::create_directories(dir_);
  const std::string copy = (dir_ / "copy.nii.gz").string();
  fs::copy_file(ch2, copy);

  const std::string k1 = VolumeCache::key_for(ch2, "spacing: [1.5, 1.5, 1.5]\n");
  EXPECT_EQ(k1.size(), 32u);
  EXPECT_EQ(k1, VolumeCache::key_for(ch2, "spacing: [1.5, 1.5, 1.5]\n"));
  EXPECT_NE(k1, VolumeCache::key_for(ch2, "spacing: [1, 1, 1]\n"));
  EXPECT_NE(k1, VolumeCache::key_for(copy, "spacing: [1.5, 1.5, 1.5]\n"));  // other path
  // Content keys ignore the path but see every byte.
  const std::string c1 = VolumeCache::content_key_for(ch2, "x");
  EXPECT_EQ(c1, VolumeCache::content_key_for(copy, "x"));
  EXPECT_NE(c1, VolumeCache::content_key_for(copy, "y"));
  const std::string before = VolumeCache::key_for(copy, "x");
  {
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x5a');
  }
  fs::last_write_time(copy, fs::last_write_time(copy) + std::chrono::seconds(5));
  EXPECT_NE(c1, VolumeCache::content_key_for(copy, "x"));
  EXPECT_NE(before, VolumeCache::key_for(copy, "x"));
  // A folder (DICOM series) is keyed by all its files.
  const std::string folder_key = VolumeCache::key_for(dir_.string(), "x");
  std::ofstream(dir_ / "another.dcm") << "more";
  EXPECT_NE(folder_key, VolumeCache::key_for(dir_.string(), "x"));
  EXPECT_THROW(VolumeCache::key_for((dir_ / "missing.nii").string(), "x"), iris::Error);
}

// Damaged files are misses (and removed); the direct reader names the file.
TEST_F(VolumeCacheTest, TruncatedOrCorruptFilesAreMisses) {
  VolumeCache cache(dir_.string());
  const CachedVolume v = sample(4);
  cache.put("k", v);
  const std::string path = cache.path_for("k");
  const auto full_size = fs::file_size(path);

  for (uintmax_t keep : {uintmax_t(0), uintmax_t(5), uintmax_t(60), full_size / 2, full_size - 1}) {
    cache.put("k", v);
    fs::resize_file(path, keep);
    try {
      iris::data::read_cached_volume(path);
      ADD_FAILURE() << "a file cut to " << keep << " bytes was accepted";
    } catch (const iris::Error& e) {
      EXPECT_EQ(e.where(), path);
    }
    std::string why;
    EXPECT_FALSE(cache.get("k", &why).has_value()) << "cut to " << keep;
    EXPECT_NE(why.find(path), std::string::npos) << why;
    EXPECT_FALSE(fs::exists(path)) << "the damaged file should be removed";
  }
  // One flipped bit in the voxels, in the geometry, or a byte appended.
  for (uintmax_t offset : {full_size - 100, uintmax_t(40)}) {
    cache.put("k", v);
    {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(offset);
      const char c = static_cast<char>(f.get());
      f.seekp(offset);
      f.put(static_cast<char>(c ^ 0x10));
    }
    std::string why;
    EXPECT_FALSE(cache.get("k", &why).has_value()) << "offset " << offset;
    EXPECT_FALSE(why.empty());
  }
  cache.put("k", v);
  std::ofstream(path, std::ios::app) << "x";
  EXPECT_FALSE(cache.get("k").has_value());
  // Not a cache file at all.
  std::ofstream(path) << "hello, world";
  std::string why;
  EXPECT_FALSE(cache.get("k", &why).has_value());
  EXPECT_NE(why.find("IRISVOL1"), std::string::npos) << why;
}

// Deterministic: a write that fails half-way (the file-size limit stops it
// after 64 KB of a 2 MB volume, as a full disk would) leaves the previous
// entry complete and readable, and no temporary file behind.
TEST_F(VolumeCacheTest, AWriteFailingHalfWayLeavesTheOldEntry) {
  VolumeCache cache(dir_.string());
  const CachedVolume old = sample(3);
  cache.put("k", old);
  CachedVolume big = sample(4);
  big.voxels = at::randn({32, 128, 128});
  big.geometry.size = {128, 128, 32};
  big.labels.reset();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG instead
    rlimit limit{64 * 1024, 64 * 1024};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    try {
      cache.put("k", big);
    } catch (const iris::Error&) {
      ::_exit(0);  // the failure was reported as it should be
    }
    ::_exit(1);  // the write "succeeded": the limit did not bite
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's put did not fail with an iris::Error";
  const auto got = cache.get("k");
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(at::equal(got->voxels, old.voxels));
  int leftovers = 0;
  for (const auto& e : fs::directory_iterator(dir_)) leftovers += e.path().filename() != "k.irisvol";
  EXPECT_EQ(leftovers, 0) << "temporary files left behind";
}

// Writers racing on one key (as two loader processes filling the same cache):
// every read sees either nothing or one complete, valid entry.
TEST_F(VolumeCacheTest, ConcurrentWritersOnOneKeyAreSafe) {
  VolumeCache cache(dir_.string());
  // Big enough that a write takes a while, so the race is real.
  CachedVolume a = sample(5), b = sample(6);
  a.voxels = at::randn({64, 128, 128});
  b.voxels = at::randn({64, 128, 128});
  a.geometry.size = b.geometry.size = {128, 128, 64};
  a.labels.reset();
  b.labels.reset();
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, bad{0};
  std::thread reader([&] {
    while (!stop) {
      const auto got = cache.get("same");
      if (got) {
        ++reads;
        if (!at::equal(got->voxels, a.voxels) && !at::equal(got->voxels, b.voxels)) ++bad;
      }
    }
  });
  std::thread writer_a([&] { for (int i = 0; i < 15; ++i) cache.put("same", a); });
  std::thread writer_b([&] { for (int i = 0; i < 15; ++i) cache.put("same", b); });
  writer_a.join();
  writer_b.join();
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(reads.load(), 0);
  const auto final = cache.get("same");
  ASSERT_TRUE(final.has_value());
  EXPECT_TRUE(at::equal(final->voxels, a.voxels) || at::equal(final->voxels, b.voxels));

  // And two processes: the child writes the same key while we do.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      for (int i = 0; i < 10; ++i) cache.put("same", b);
    } catch (...) {
      ::_exit(1);
    }
    ::_exit(0);
  }
  for (int i = 0; i < 10; ++i) {
    cache.put("same", a);
    const auto got = cache.get("same");
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(at::equal(got->voxels, a.voxels) || at::equal(got->voxels, b.voxels));
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int leftovers = 0;
  for (const auto& e : fs::directory_iterator(dir_)) leftovers += e.path().filename() != "same.irisvol";
  EXPECT_EQ(leftovers, 0) << "temporary files left behind";
}


// Mapped entries: the same tensors as a read, in place in the file (64-byte
// aligned), copy-on-write, checked once per file.
TEST_F(VolumeCacheTest, MappedEntriesEqualReadOnesAndNeverChangeTheFile) {
  VolumeCache cache(dir_.string());
  const CachedVolume v = sample(7);
  cache.put("m", v);
  const std::string path = cache.path_for("m");
  const auto mapped = cache.get("m", nullptr, /*mapped*/ true);
  ASSERT_TRUE(mapped.has_value());
  expect_identical(v, *mapped);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(mapped->voxels.data_ptr()) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(mapped->labels->data_ptr()) % 64, 0u);
  // Writing to a mapped tensor changes this process's copy only.
  mapped->voxels.fill_(0);
  mapped->labels->fill_(9);
  expect_identical(v, iris::data::read_cached_volume(path));
  // A damaged file (a new one: rewritten by rename) fails on its first
  // mapping, naming the file.
  cache.put("m", v);
  const auto size = fs::file_size(path);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(size - 20);
    const char c = static_cast<char>(f.get());
    f.seekp(size - 20);
    f.put(static_cast<char>(c ^ 0x01));
  }
  try {
    iris::data::map_cached_volume(path);
    ADD_FAILURE() << "a corrupted file was mapped";
  } catch (const iris::Error& e) {
    EXPECT_EQ(e.where(), path);
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  std::string why;
  EXPECT_FALSE(cache.get("m", &why, true).has_value());
  EXPECT_NE(why.find(path), std::string::npos) << why;
  // Truncated: refused before anything is mapped.
  cache.put("m", v);
  fs::resize_file(path, size / 2);
  EXPECT_THROW(iris::data::map_cached_volume(path), iris::Error);
}

// The layout is the one the header documents (padding to 64 bytes, zeros);
// a file of version 1 (no padding) is refused, naming its version.
TEST_F(VolumeCacheTest, LayoutIsAlignedAndVersion1IsRefused) {
  VolumeCache cache(dir_.string());
  const CachedVolume v = sample(8);
  cache.put("v2", v);
  std::ifstream in(cache.path_for("v2"), std::ios::binary);
  const std::string v2((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // magic, version, info size, info, geometry (3 i64 + 15 f64), voxel header
  // (2 + 3 i64), label flag, label header (2 + 3 i64).
  const size_t header = 8 + 4 + 4 + v.info.size() + 3 * 8 + 15 * 8 + (2 + 24) + 1 + (2 + 24);
  const size_t voxel_bytes = v.voxels.nbytes(), label_bytes = v.labels->nbytes();
  auto up64 = [](size_t n) { return (n + 63) / 64 * 64; };
  const size_t voxel_at = up64(header), label_at = up64(voxel_at + voxel_bytes);
  ASSERT_EQ(v2.size(), label_at + label_bytes + 8);
  EXPECT_EQ(v2.substr(header, voxel_at - header), std::string(voxel_at - header, '\0'));
  EXPECT_EQ(0, std::memcmp(v2.data() + voxel_at, v.voxels.data_ptr(), voxel_bytes));
  EXPECT_EQ(0, std::memcmp(v2.data() + label_at, v.labels->data_ptr(), label_bytes));
  std::string v1 = v2.substr(0, header) + v2.substr(voxel_at, voxel_bytes) + v2.substr(label_at, label_bytes) +
                   v2.substr(v2.size() - 8);
  const uint32_t one = 1;
  std::memcpy(&v1[8], &one, 4);
  const std::string path = (dir_ / "old.irisvol").string();
  std::ofstream(path, std::ios::binary) << v1;
  for (bool mapped : {false, true}) {
    try {
      mapped ? iris::data::map_cached_volume(path) : iris::data::read_cached_volume(path);
      ADD_FAILURE() << "a version 1 file was accepted";
    } catch (const iris::Error& e) {
      EXPECT_EQ(e.where(), path);
      EXPECT_NE(std::string(e.what()).find("version 1"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
