// Writes are checked, durable and atomic: a full disk is an error that says
// so, and nothing is left under the final name or as a temporary file.
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "iris/common/atomic_file.h"
#include "iris/common/tensor_file.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::error_of;
using iris::testing::SmallDisk;
using iris::testing::temp_folder;

TEST(AtomicFile, AFullDiskIsAnErrorAndLeavesNothing) {
  SmallDisk disk("full_disk", 256 * 1024);
  ASSERT_TRUE(disk.mounted());
  disk.fill(8 * 1024);
  const std::string target = (disk.path() / "report.json").string();
  // Bigger than what is left: the write fails midway.
  const std::string big(64 * 1024, 'r');
  std::string msg = error_of([&] { iris::write_text_file(target, big); });
  EXPECT_NE(msg.find(target), std::string::npos) << msg;
  EXPECT_NE(msg.find("no space left on the device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("needed about"), std::string::npos) << msg;
  EXPECT_NE(msg.find("free"), std::string::npos) << msg;
  EXPECT_TRUE(disk.listing().empty()) << disk.listing().front();
  // The same through the tensor-file writer (models, tasks, checkpoints).
  iris::TensorFile f("iris-test-v1");
  f.put("w", at::zeros({64 * 1024}, at::kFloat));
  msg = error_of([&] { f.save((disk.path() / "model.iris").string()); });
  EXPECT_NE(msg.find("no space left on the device"), std::string::npos) << msg;
  EXPECT_TRUE(disk.listing().empty()) << disk.listing().front();
  // An existing file stays as it was when its replacement does not fit.
  fs::remove(disk.path() / "filler");
  iris::write_text_file(target, "old contents");
  disk.fill(4 * 1024);
  EXPECT_FALSE(error_of([&] { iris::write_text_file(target, big); }).empty());
  std::ifstream in(target);
  std::string kept((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(kept, "old contents");
  EXPECT_EQ(disk.listing(), std::vector<std::string>{"report.json"});
}

TEST(AtomicFile, AFailingWriterLeavesNothing) {
  const fs::path dir = temp_folder("failing_writer");
  const std::string target = (dir / "out.nii.gz").string();
  // A writer that writes half and throws (what a library does on an I/O error).
  EXPECT_THROW(iris::write_atomically(target,
                                      [](const std::string& tmp) {
                                        std::ofstream(tmp) << "half";
                                        throw std::runtime_error("injected failure");
                                      }),
               std::runtime_error);
  // A writer that reports success but wrote nothing (an ITK writer on a full disk).
  const std::string msg = error_of([&] { iris::write_atomically(target, [](const std::string& tmp) { std::ofstream{tmp}; }); });
  EXPECT_NE(msg.find("no space left"), std::string::npos) << msg;
  // A writer through OutputFile that throws after some bytes.
  EXPECT_THROW(iris::write_file_atomically(target,
                                           [](iris::OutputFile& f) {
                                             f.write(std::string(1000, 'x'));
                                             throw iris::Error("injected", "stop");
                                           }),
               iris::Error);
  EXPECT_TRUE(fs::is_empty(dir));
  // The temporary keeps the final extension (writers choose formats by it).
  std::string seen;
  iris::write_atomically(target, [&](const std::string& tmp) {
    seen = tmp;
    std::ofstream(tmp) << "data";
  });
  EXPECT_EQ(iris::full_extension(seen), ".nii.gz") << seen;
  EXPECT_TRUE(fs::exists(target));
  fs::remove_all(dir);
}

TEST(AtomicFile, StaleTemporariesOfDeadProcessesAreRemoved) {
  const fs::path dir = temp_folder("stale");
  // pid 1 never runs iris; a pid far beyond pid_max is never alive.
  std::ofstream(dir / ".last.tmp999999999_0.ckpt") << "stale";
  std::ofstream(dir / (".last.tmp" + std::to_string(::getpid()) + "_7.ckpt")) << "mine, being written";
  std::ofstream(dir / "last.ckpt") << "real";
  std::ofstream(dir / "notes.tmp12") << "not ours";
  EXPECT_EQ(iris::remove_stale_temporaries(dir.string()), 1);
  EXPECT_FALSE(fs::exists(dir / ".last.tmp999999999_0.ckpt"));
  EXPECT_TRUE(fs::exists(dir / (".last.tmp" + std::to_string(::getpid()) + "_7.ckpt")));
  EXPECT_TRUE(fs::exists(dir / "last.ckpt"));
  EXPECT_TRUE(fs::exists(dir / "notes.tmp12"));
  fs::remove_all(dir);
}

TEST(AtomicFile, AppendingToALogOnAFullDiskIsAnError) {
  SmallDisk disk("full_log", 128 * 1024);
  ASSERT_TRUE(disk.mounted());
  disk.fill(0);
  const std::string log = (disk.path() / "metrics.jsonl").string();
  const std::string msg = error_of([&] { iris::append_text_file(log, std::string(32 * 1024, 'm')); });
  EXPECT_NE(msg.find("no space left"), std::string::npos) << msg;
}
