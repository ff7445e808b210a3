// TensorBoard event files: CRC-32C against published vectors, write/read
// round trips, corruption and truncation detection, and a cross-check with
// an independent standard-library Python decoder (TensorBoard itself is not
// installed on the test machines).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "iris/common/error.h"
#include "iris/train/tensorboard.h"
#include "support/test_support.h"

using namespace iris;
using iris::testing::error_of;
namespace fs = std::filesystem;

namespace {

using iris::testing::kPython;
const std::string kDecoder = std::string(IRIS_TEST_DATA_DIR) + "/train/read_tfevents.py";

// A fresh folder, removed again when the test ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("iris_tensorboard_test_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void dump(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

// Byte offsets at which each record of an event file starts.
std::vector<size_t> record_offsets(const std::string& bytes) {
  std::vector<size_t> offsets;
  size_t pos = 0;
  while (pos + 8 <= bytes.size()) {
    uint64_t length = 0;
    for (int i = 0; i < 8; ++i) length |= uint64_t{static_cast<unsigned char>(bytes[pos + i])} << (8 * i);
    offsets.push_back(pos);
    pos += 12 + length + 4;
  }
  return offsets;
}

std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Written {
  std::string tag;
  double value;
  long step;
};

const std::vector<Written> kScalars = {
    {"train/loss", 0.693147, 0},         {"train/lr", 1e-3, 0},       {"train/loss", 0.5, 1},
    {"val/dice", 0.8125, 10},            {"train/loss", -1.0 / 3, 99}, {"train/grad_norm", 1e20, 1L << 40},
    {"weird tag/é", 0.0, -5},
};

// Writes kScalars into a fresh folder and returns the event file's path.
std::string write_scalars(const fs::path& dir) {
  train::TensorBoardWriter tb(dir.string());
  for (const auto& s : kScalars) tb.add_scalar(s.tag, s.value, s.step);
  return tb.path();
}

}  // namespace

TEST(Crc32c, KnownVectors) {
  // The CRC catalogue's check value and RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(train::crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string ascending(32, '\0'), descending(32, '\0');
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(train::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(train::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(train::crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(train::crc32c(descending.data(), descending.size()), 0x113FDB5Cu);
  EXPECT_EQ(train::crc32c("", 0), 0u);
  // Continuing a CRC over a second piece equals one pass over both.
  EXPECT_EQ(train::crc32c("56789", 5, train::crc32c("1234", 4)), 0xE3069283u);
  // TFRecord mask: rotate right by 15, add 0xa282ead8.
  EXPECT_EQ(train::masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

TEST(TensorBoard, WritesScalarsThatReadBack) {
  const TempDir root("roundtrip");
  const fs::path dir = root.path / "nested" / "tb";  // created by the writer
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string path = write_scalars(dir);
  const double after = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  const std::string name = fs::path(path).filename().string();
  std::smatch m;
  ASSERT_TRUE(std::regex_match(name, m, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.iris)"))) << name;
  EXPECT_EQ(m[2].str(), host);
  EXPECT_EQ(m[3].str(), std::to_string(::getpid()));
  EXPECT_NEAR(std::stod(m[1].str()), before, 2.0);
  EXPECT_EQ(fs::path(path).parent_path(), dir);

  // The first record is the version event.
  const std::string bytes = slurp(path);
  const auto offsets = record_offsets(bytes);
  ASSERT_EQ(offsets.size(), kScalars.size() + 1);
  EXPECT_NE(bytes.substr(0, offsets[1]).find("brain.Event:2"), std::string::npos);

  const auto events = train::read_tensorboard_scalars(path);
  ASSERT_EQ(events.size(), kScalars.size());
  for (size_t i = 0; i < events.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(events[i].tag, kScalars[i].tag);
    EXPECT_EQ(events[i].step, kScalars[i].step);
    EXPECT_EQ(events[i].value, static_cast<float>(kScalars[i].value));  // stored as float32
    EXPECT_GE(events[i].wall_time, before - 1e-3);
    EXPECT_LE(events[i].wall_time, after + 1e-3);
    if (i > 0) {
      EXPECT_GE(events[i].wall_time, events[i - 1].wall_time);
    }
  }
}

TEST(TensorBoard, BuffersUntilCountTimeFlushOrDestruction) {
  const TempDir root("buffering");
  const fs::path dir = root.path;
  {
    train::TensorBoardWriter tb(dir.string(), 3, 3600.0);
    const auto version_only = fs::file_size(tb.path());
    ASSERT_GT(version_only, 0u);  // the version event is written at once
    tb.add_scalar("a", 1, 1);
    tb.add_scalar("a", 2, 2);
    EXPECT_EQ(fs::file_size(tb.path()), version_only);
    EXPECT_TRUE(train::read_tensorboard_scalars(tb.path()).empty());
    tb.add_scalar("a", 3, 3);  // third pending record: written
    EXPECT_EQ(train::read_tensorboard_scalars(tb.path()).size(), 3u);
    tb.add_scalar("a", 4, 4);
    tb.flush();
    EXPECT_EQ(train::read_tensorboard_scalars(tb.path()).size(), 4u);
    tb.add_scalar("a", 5, 5);  // left for the destructor
  }
  {
    // A zero interval writes each record as it comes.
    train::TensorBoardWriter tb(dir.string(), 1000, 0.0);
    tb.add_scalar("b", 1, 1);
    EXPECT_EQ(train::read_tensorboard_scalars(tb.path()).size(), 1u);
  }
  // Two writers in one folder, process and second get separate files.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 2u);
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return fs::file_size(a) > fs::file_size(b);
  });
  const auto first = train::read_tensorboard_scalars(files[0].string());
  ASSERT_EQ(first.size(), 5u);
  EXPECT_EQ(first[4].step, 5);
  EXPECT_EQ(first[4].value, 5.0f);
  EXPECT_EQ(train::read_tensorboard_scalars(files[1].string()).size(), 1u);
}

TEST(TensorBoard, FlippedByteIsACrcErrorNamingFileAndOffset) {
  const TempDir root("flip");
  const fs::path dir = root.path;
  const std::string path = write_scalars(dir);
  const std::string good = slurp(path);
  const auto offsets = record_offsets(good);
  ASSERT_GE(offsets.size(), 3u);
  const size_t record = offsets[2];

  std::string bad = good;
  bad[record + 12 + 5] ^= 0x10;  // inside the event data
  dump(path, bad);
  std::string msg = error_of([&] { train::read_tensorboard_scalars(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad data CRC"), std::string::npos) << msg;
  EXPECT_NE(msg.find("offset " + std::to_string(record)), std::string::npos) << msg;

  bad = good;
  bad[record + 1] ^= 0x01;  // inside the length
  dump(path, bad);
  msg = error_of([&] { train::read_tensorboard_scalars(path); });
  EXPECT_NE(msg.find("bad length CRC"), std::string::npos) << msg;
  EXPECT_NE(msg.find("offset " + std::to_string(record)), std::string::npos) << msg;

  bad = good;
  bad[offsets[3] - 1] ^= static_cast<char>(0x80);  // the stored data CRC itself
  dump(path, bad);
  msg = error_of([&] { train::read_tensorboard_scalars(path); });
  EXPECT_NE(msg.find("bad data CRC"), std::string::npos) << msg;
  EXPECT_NE(msg.find("offset " + std::to_string(record)), std::string::npos) << msg;
}

TEST(TensorBoard, TruncatedFileIsATruncationErrorNamingFileAndOffset) {
  const TempDir root("truncate");
  const fs::path dir = root.path;
  const std::string path = write_scalars(dir);
  const std::string good = slurp(path);
  const size_t last = record_offsets(good).back();

  for (size_t keep : {good.size() - 1, good.size() - 4, last + 20, last + 12, last + 5}) {
    SCOPED_TRACE(keep);
    dump(path, good.substr(0, keep));
    const std::string msg = error_of([&] { train::read_tensorboard_scalars(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated record"), std::string::npos) << msg;
    EXPECT_NE(msg.find("offset " + std::to_string(last)), std::string::npos) << msg;
  }
  // Cut exactly between records: a shorter but valid file.
  dump(path, good.substr(0, last));
  EXPECT_EQ(train::read_tensorboard_scalars(path).size(), kScalars.size() - 1);
}

TEST(TensorBoard, ErrorsNameTheFile) {
  const TempDir root("errors");
  const fs::path dir = root.path;
  const std::string missing = (dir / "no_such.tfevents").string();
  std::string msg = error_of([&] { train::read_tensorboard_scalars(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;

  // A regular file where the log folder should be.
  const fs::path blocker = dir / "blocker";
  dump(blocker, "x");
  msg = error_of([&] { train::TensorBoardWriter tb((blocker / "tb").string()); });
  EXPECT_NE(msg.find((blocker / "tb").string()), std::string::npos) << msg;
}

// An independent decoder (Python standard library only, written from the
// format description) must read exactly what we wrote, CRCs included.
TEST(TensorBoard, IndependentPythonDecoderReadsOurFile) {
  REQUIRE_DATA(kPython);
  REQUIRE_DATA(kDecoder);
  const TempDir root("python_reads");
  const fs::path dir = root.path;
  const std::string path = write_scalars(dir);
  const auto ours = train::read_tensorboard_scalars(path);
  const fs::path out = dir / "decoded.txt";
  const std::string cmd = kPython + " " + shell_quoted(kDecoder) + " " + shell_quoted(path) + " > " +
                          shell_quoted(out.string()) + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(out);

  std::ifstream in(out);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_EQ(line, "version\tbrain.Event:2");
  size_t i = 0;
  while (std::getline(in, line)) {
    SCOPED_TRACE(line);
    ASSERT_LT(i, ours.size());
    std::vector<std::string> cols;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, '\t');) cols.push_back(c);
    ASSERT_EQ(cols.size(), 5u);
    EXPECT_EQ(cols[0], "scalar");
    // Python's repr round-trips, so wall times and values compare exactly.
    EXPECT_EQ(std::strtod(cols[1].c_str(), nullptr), ours[i].wall_time);
    EXPECT_EQ(std::stol(cols[2]), kScalars[i].step);
    EXPECT_EQ(cols[3], kScalars[i].tag);
    EXPECT_EQ(std::strtod(cols[4].c_str(), nullptr), static_cast<double>(static_cast<float>(kScalars[i].value)));
    ++i;
  }
  EXPECT_EQ(i, kScalars.size());

  // And it rejects what ours rejects.
  std::string bad = slurp(path);
  bad[bad.size() / 2] ^= 0x04;
  dump(path, bad);
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_NE(slurp(out).find("CRC mismatch"), std::string::npos) << slurp(out);
}

// The reverse: the Python side writes events with fields iris never writes
// (unknown fields of every wire type, non-scalar values, a log message,
// fields out of order, negative and 2^40 steps); our reader must skip them.
TEST(TensorBoard, ReaderDecodesIndependentlyWrittenEvents) {
  REQUIRE_DATA(kPython);
  REQUIRE_DATA(kDecoder);
  const TempDir root("python_writes");
  const fs::path dir = root.path;
  const fs::path file = dir / "events.out.tfevents.python";
  const fs::path log = dir / "log.txt";
  const std::string cmd = kPython + " " + shell_quoted(kDecoder) + " --write " + shell_quoted(file.string()) +
                          " > " + shell_quoted(log.string()) + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(log);

  const auto events = train::read_tensorboard_scalars(file.string());
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].tag, "loss");
  EXPECT_EQ(events[0].step, 7);
  EXPECT_EQ(events[0].value, 0.5f);
  EXPECT_EQ(events[0].wall_time, 1700000001.5);
  EXPECT_EQ(events[1].tag, "lr");
  EXPECT_EQ(events[1].step, -3);
  EXPECT_EQ(events[1].value, 1e-3f);
  EXPECT_EQ(events[1].wall_time, 1700000002.0);
  EXPECT_EQ(events[2].tag, "dice");
  EXPECT_EQ(events[2].step, -3);
  EXPECT_EQ(events[2].value, -2.25f);
  EXPECT_EQ(events[3].tag, "x/y");
  EXPECT_EQ(events[3].step, 1L << 40);
  EXPECT_EQ(events[3].value, 3.0f);
  EXPECT_EQ(events[3].wall_time, 1700000004.0);
}
