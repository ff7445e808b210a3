// Writes are checked, durable and atomic: a full disk is an error that says
// so, and nothing is left under the final name or as a temporary file.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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

// A legal 255-byte name is written, whether its length is in the stem or in
// the extension (a long extension used to make the temporary name too long).
TEST(AtomicFile, ALegal255ByteNameIsWrittenWhereverItsLengthLies) {
  const fs::path dir = temp_folder("long_names");
  for (const std::string name : {std::string(248, 's') + ".nii.gz", "a." + std::string(253, 'e')}) {
    ASSERT_EQ(name.size(), 255u);
    iris::write_text_file((dir / name).string(), "content");
    std::ifstream in(dir / name);
    std::string text;
    std::getline(in, text);
    EXPECT_EQ(text, "content") << name.substr(0, 20);
  }
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += !e.path().empty();
  EXPECT_EQ(files, 2u) << "a temporary file was left behind";
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

// SIGTERM or SIGINT in the middle of a write (a job cancelled, Ctrl-C): the
// process still dies of the signal, as without iris' handler, and leaves
// neither the target nor its temporary file.
TEST(AtomicFile, ASignalMidWriteLeavesNeitherTheFileNorItsTemporary) {
  for (const int sig : {SIGTERM, SIGINT}) {
    const fs::path dir = temp_folder("signal_mid_write");
    const fs::path target = dir / "labels.nii";
    int half_written[2];
    ASSERT_EQ(::pipe(half_written), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(half_written[0]);
      iris::install_write_signal_handlers();
      try {
        iris::write_file_atomically(
            target.string(),
            [&](iris::OutputFile& f) {
              f.write(std::string(1 << 20, 'x'));
              const char c = 'h';
              if (::write(half_written[1], &c, 1) != 1) ::_exit(3);
              ::pause();  // the signal comes here
            },
            2 << 20);
      } catch (...) {
      }
      ::_exit(0);  // not reached: the signal ends the process
    }
    ::close(half_written[1]);
    char c = 0;
    ASSERT_EQ(::read(half_written[0], &c, 1), 1);
    ::close(half_written[0]);
    long entries = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
    EXPECT_EQ(entries, 1) << "the temporary file, half written";
    ::kill(child, sig);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "status " << status;
    EXPECT_FALSE(fs::exists(target));
    entries = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
    EXPECT_EQ(entries, 0) << "a temporary file was left";
  }
}
