// The file format of models, tasks and checkpoints: safetensors with an iris
// checksum. Every kind of damage must be an error naming the file, found
// before anything is allocated from a size the file claims.
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "iris/common/tensor_file.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::TensorFile;
using iris::testing::error_of;
using iris::testing::temp_folder;

namespace {

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with a header written by hand (not by TensorFile::save).
std::string handmade(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + json + data;
}

TensorFile sample() {
  TensorFile f("iris-test-v1");
  f.put("a/float", at::arange(12, at::kFloat).reshape({3, 4}));
  f.put("b/long", at::tensor({-5L, 7L}, at::kLong));
  f.put("c/bytes", at::tensor({1, 2, 3}, at::kByte));
  f.put("d/double", at::full({2, 2, 2}, 0.25, at::kDouble));
  f.put("e/empty", at::zeros({0, 4}, at::kFloat));
  f.set("text", "line one\nline two \"quoted\" \xc3\xa9");
  f.set_int("count", 42);
  f.set_strings("names", {"liver", "", "kidney, left"});
  return f;
}

}  // namespace

TEST(TensorFile, RoundTripsTensorsAndMetadataExactly) {
  const fs::path dir = temp_folder("tensor_file");
  const TensorFile f = sample();
  f.save((dir / "x.st").string());
  const TensorFile g = TensorFile::load((dir / "x.st").string(), "iris-test-v1", "test file");
  ASSERT_EQ(g.tensors().size(), f.tensors().size());
  for (const auto& [name, t] : f.tensors()) {
    const at::Tensor& u = g.get(name);
    EXPECT_EQ(u.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(u.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(u, t)) << name;
  }
  EXPECT_EQ(g.meta("text"), f.meta("text"));
  EXPECT_EQ(g.meta_int("count", 0, 100), 42);
  EXPECT_EQ(g.meta_strings("names", 3), (std::vector<std::string>{"liver", "", "kidney, left"}));
  EXPECT_EQ(g.format(), "iris-test-v1");
  // The layout is the published one: length, JSON header starting with '{'
  // padded to 8 bytes, then data.
  const std::string raw = bytes_of(dir / "x.st");
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw[8], '{');
  EXPECT_NE(raw.find("\"__metadata__\""), std::string::npos);
  fs::remove_all(dir);
}

TEST(TensorFile, EveryFlippedByteIsReportedAsDamage) {
  const fs::path dir = temp_folder("tensor_file_flip");
  sample().save((dir / "x.st").string());
  const std::string good = bytes_of(dir / "x.st");
  // Flip one bit at many places: header length, JSON, metadata values, tensor bytes.
  int refused = 0, tried = 0;
  for (size_t pos = 0; pos < good.size(); pos += std::max<size_t>(1, good.size() / 97)) {
    std::string bad = good;
    bad[pos] = static_cast<char>(bad[pos] ^ 0x04);
    write_bytes(dir / "bad.st", bad);
    ++tried;
    try {
      TensorFile::load((dir / "bad.st").string(), "iris-test-v1", "test file");
    } catch (const iris::Error& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find((dir / "bad.st").string()), std::string::npos) << e.what();
      continue;
    }
    // A flip in the padding spaces or inside JSON whitespace changes nothing that is read.
    const std::string around = good.substr(pos > 4 ? pos - 4 : 0, 9);
    EXPECT_TRUE(bad[pos] == ' ' || good[pos] == ' ') << "byte " << pos << " flipped and still loaded: '" << around << "'";
  }
  EXPECT_GT(refused, tried * 9 / 10);
  // The message for a data flip says what happened.
  std::string bad = good;
  bad[bad.size() - 3] ^= 0x10;
  write_bytes(dir / "bad.st", bad);
  const std::string msg = error_of([&] { TensorFile::load((dir / "bad.st").string(), "iris-test-v1", "test file"); });
  EXPECT_NE(msg.find("is damaged: its checksum does not match"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(TensorFile, CutShortOrAppendedFilesAreRefused) {
  const fs::path dir = temp_folder("tensor_file_cut");
  sample().save((dir / "x.st").string());
  const std::string good = bytes_of(dir / "x.st");
  for (size_t keep : {size_t{0}, size_t{5}, size_t{12}, good.size() / 2, good.size() - 1}) {
    write_bytes(dir / "cut.st", good.substr(0, keep));
    const std::string msg = error_of([&] { TensorFile::load((dir / "cut.st").string(), "", "test file"); });
    EXPECT_NE(msg.find("cut.st"), std::string::npos) << keep << ": " << msg;
  }
  write_bytes(dir / "long.st", good + "extra");
  const std::string msg = error_of([&] { TensorFile::load((dir / "long.st").string(), "", "test file"); });
  EXPECT_NE(msg.find("bytes after the last tensor"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(TensorFile, HeadersThatLieAboutSizesAreRefusedBeforeAllocating) {
  const fs::path dir = temp_folder("tensor_file_lies");
  const std::string meta = R"("__metadata__":{"format":"t","iris.checksum":"crc32:00000000"})";
  struct Case {
    std::string json, data, words;
  } cases[] = {
      // A shape of 2^40 floats in a 16-byte file must not allocate 4 TB.
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}})", std::string(16, 'a'),
       "larger than the file"},
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}})", std::string(16, 'a'),
       "lies outside the file"},
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, 'a'), "hole or overlap"},
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", std::string(16, 'a'), "hole or overlap"},
      {"{" + meta + R"(,"x":{"dtype":"C64","shape":[2],"data_offsets":[0,16]}})", std::string(16, 'a'), "unknown dtype"},
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", std::string(16, 'a'),
       "but its shape needs 12"},
      {"{" + meta + R"(,"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", std::string(16, 'a'), "invalid shape"},
      {"{" + meta + R"(,"x":[1,2]})", std::string(), "has no dtype"},
      {R"({"__metadata__":{"format":3}})", std::string(), "is not a string"},
      {"{not json}", std::string(), "not valid JSON"},
      {"[1,2,3]", std::string(), "no safetensors header"},
  };
  for (const auto& c : cases) {
    write_bytes(dir / "lie.st", handmade(c.json, c.data));
    const std::string msg = error_of([&] { TensorFile::load((dir / "lie.st").string(), "", "test file"); });
    EXPECT_NE(msg.find(c.words), std::string::npos) << c.json << "\n -> " << msg;
  }
  // A header length beyond the file.
  std::string huge = handmade("{}", "");
  huge[5] = 0x10;
  write_bytes(dir / "lie.st", huge);
  EXPECT_NE(error_of([&] { TensorFile::load((dir / "lie.st").string(), "", "test file"); }).find("does not fit the file"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(TensorFile, WrongFormatsAndFilesOfTheFirstFormatSayWhatToDo) {
  const fs::path dir = temp_folder("tensor_file_format");
  sample().save((dir / "x.st").string());
  std::string msg = error_of([&] { TensorFile::load((dir / "x.st").string(), "iris-model-v2", "iris model file"); });
  EXPECT_NE(msg.find("is not an iris model file (format 'iris-test-v1', expected 'iris-model-v2')"), std::string::npos)
      << msg;
  // iris' first format was a zip (TorchScript) archive.
  write_bytes(dir / "old.iris", std::string("PK\x03\x04", 4) + std::string(200, 'z'));
  msg = error_of([&] { TensorFile::load((dir / "old.iris").string(), "iris-model-v2", "iris model file"); });
  EXPECT_NE(msg.find("iris-import --trust-legacy"), std::string::npos) << msg;
  // A file without the iris checksum (another program's safetensors).
  write_bytes(dir / "plain.st", handmade(R"({"__metadata__":{"format":"t"}})", ""));
  msg = error_of([&] { TensorFile::load((dir / "plain.st").string(), "", "test file"); });
  EXPECT_NE(msg.find("has no iris checksum"), std::string::npos) << msg;
  msg = error_of([&] { TensorFile::load((dir / "missing.st").string(), "", "test file"); });
  EXPECT_NE(msg.find("file not found"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(TensorFile, MetadataIsCheckedWhenRead) {
  const fs::path dir = temp_folder("tensor_file_meta");
  TensorFile f("iris-test-v1");
  f.set("count", "12abc");
  f.set("names", "[\"a\", 3]");
  f.set("many", "[\"a\", \"b\", \"c\"]");
  f.save((dir / "m.st").string());
  const TensorFile g = TensorFile::load((dir / "m.st").string(), "", "test file");
  EXPECT_NE(error_of([&] { g.meta_int("count", 0, 100); }).find("expected an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { g.meta_strings("names", 10); }).find("not a string"), std::string::npos);
  EXPECT_NE(error_of([&] { g.meta_strings("many", 2); }).find("at most 2"), std::string::npos);
  EXPECT_NE(error_of([&] { g.get("nothing"); }).find("tensor 'nothing' is missing"), std::string::npos);
  fs::remove_all(dir);
}
