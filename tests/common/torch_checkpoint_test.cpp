// Reads the files of tests/fixtures/torch_save (written by
// tools/make_torch_save_fixtures.py with Python torch) and checks every value.
#include "iris/common/torch_checkpoint.h"

#include "iris/common/error.h"
#include "support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

const std::string kDir = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/torch_save/";

struct ExpectedTensor {
  std::string key;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<double> values;
};

// expected.txt ("key dtype shape" per line) and expected.bin (the values as
// little-endian float64, row-major, one tensor after the other).
std::vector<ExpectedTensor> read_expected() {
  std::ifstream manifest(kDir + "expected.txt");
  std::ifstream values(kDir + "expected.bin", std::ios::binary);
  EXPECT_TRUE(manifest && values);
  std::vector<ExpectedTensor> expected;
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    ExpectedTensor tensor;
    std::string shape;
    fields >> tensor.key >> tensor.dtype >> shape;
    int64_t numel = 1;
    if (shape != "scalar") {
      std::istringstream dims(shape);
      std::string dim;
      while (std::getline(dims, dim, 'x')) {
        tensor.shape.push_back(std::stoll(dim));
        numel *= tensor.shape.back();
      }
    }
    tensor.values.resize(static_cast<size_t>(numel));
    values.read(reinterpret_cast<char*>(tensor.values.data()),
                static_cast<std::streamsize>(numel * sizeof(double)));
    EXPECT_TRUE(values) << "expected.bin too short at " << tensor.key;
    expected.push_back(std::move(tensor));
  }
  return expected;
}

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return "other";
  }
}

// Every tensor of `checkpoint` equals the fixture's expected values exactly.
void expect_matches_fixture(const iris::TorchCheckpoint& checkpoint) {
  const auto expected = read_expected();
  ASSERT_EQ(checkpoint.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& [key, tensor] = checkpoint.tensors[i];
    SCOPED_TRACE(expected[i].key);
    EXPECT_EQ(key, expected[i].key);
    EXPECT_EQ(dtype_name(tensor.scalar_type()), expected[i].dtype);
    EXPECT_EQ(tensor.sizes().vec(), expected[i].shape);
    at::Tensor as_double = tensor.to(at::kDouble).contiguous().reshape({-1});
    ASSERT_EQ(as_double.numel(), static_cast<int64_t>(expected[i].values.size()));
    const double* got = as_double.data_ptr<double>();
    for (size_t j = 0; j < expected[i].values.size(); ++j)
      ASSERT_EQ(got[j], expected[i].values[j]) << "element " << j;
  }
}

const at::Tensor& tensor_named(const iris::TorchCheckpoint& checkpoint, const std::string& key) {
  for (const auto& entry : checkpoint.tensors)
    if (entry.first == key) return entry.second;
  throw std::runtime_error("no tensor " + key);
}

std::string error_of(const std::string& path, const std::string& prefer = "") {
  try {
    iris::read_torch_checkpoint(path, prefer);
  } catch (const iris::Error& e) {
    return e.what();
  }
  return "";
}

using iris::testing::temp_path;

TEST(TorchCheckpoint, BareStateDictHasEveryDtypeAndValue) {
  const auto checkpoint = iris::read_torch_checkpoint(kDir + "bare_state_dict.pt");
  EXPECT_EQ(checkpoint.source_key, "");
  expect_matches_fixture(checkpoint);
  // Spot values straight from the generating script.
  EXPECT_EQ(tensor_named(checkpoint, "steps")[2].item<int64_t>(), 123456789012LL);
  EXPECT_EQ(tensor_named(checkpoint, "bytes_u8")[2].item<uint8_t>(), 255);
  EXPECT_EQ(tensor_named(checkpoint, "bytes_i8")[0].item<int8_t>(), -128);
  EXPECT_EQ(tensor_named(checkpoint, "halfs")[1].item<float>(), -1.25f);
  EXPECT_EQ(tensor_named(checkpoint, "scalar").dim(), 0);
  EXPECT_EQ(tensor_named(checkpoint, "scalar").item<float>(), 2.75f);
}

TEST(TorchCheckpoint, KeepsStridesOffsetsAndSharedStorage) {
  const auto checkpoint = iris::read_torch_checkpoint(kDir + "bare_state_dict.pt");
  const at::Tensor& transposed = tensor_named(checkpoint, "transposed");
  const at::Tensor& row = tensor_named(checkpoint, "shared_row1");
  const at::Tensor& block = tensor_named(checkpoint, "shared_block");
  EXPECT_FALSE(transposed.is_contiguous());
  EXPECT_EQ(transposed.strides().vec(), (std::vector<int64_t>{1, 6}));
  EXPECT_EQ(row.storage_offset(), 6);
  EXPECT_EQ(block.storage_offset(), 8);
  EXPECT_EQ(block.strides().vec(), (std::vector<int64_t>{6, 1}));
  // base = arange(24).reshape(4, 6) / 8, saved once and viewed three times.
  EXPECT_EQ(transposed.storage().data(), row.storage().data());
  EXPECT_EQ(row.storage().data(), block.storage().data());
  EXPECT_EQ(block[1][2].item<float>(), 16.0f / 8.0f);
}

TEST(TorchCheckpoint, TrainingCheckpointUsesModelEntryAndIgnoresTheRest) {
  const auto checkpoint = iris::read_torch_checkpoint(kDir + "wrapped_checkpoint.pt");
  EXPECT_EQ(checkpoint.source_key, "model");
  expect_matches_fixture(checkpoint);
}

TEST(TorchCheckpoint, PreferNamesTheEntry) {
  EXPECT_EQ(iris::read_torch_checkpoint(kDir + "wrapped_checkpoint.pt", "model").source_key, "model");
  // The optimizer entry is a dict, but its tensors sit deeper: none at its top level.
  EXPECT_NE(error_of(kDir + "wrapped_checkpoint.pt", "optimizer").find("no tensor under 'optimizer'"),
            std::string::npos);
  const std::string missing = error_of(kDir + "wrapped_checkpoint.pt", "ema_model");
  EXPECT_NE(missing.find("no entry 'ema_model'"), std::string::npos) << missing;
  // A non-dict entry is not a state dict.
  EXPECT_NE(error_of(kDir + "wrapped_checkpoint.pt", "epoch").find("not a state dict"), std::string::npos);
}

TEST(TorchCheckpoint, StripsDdpModulePrefix) {
  const auto checkpoint = iris::read_torch_checkpoint(kDir + "ddp_prefixed.pt");
  EXPECT_EQ(checkpoint.source_key, "");
  expect_matches_fixture(checkpoint);
}

TEST(TorchCheckpoint, ReadsPickleProtocol4) {
  expect_matches_fixture(iris::read_torch_checkpoint(kDir + "protocol4_state_dict.pt"));
}

TEST(TorchCheckpoint, RefusesForeignGlobals) {
  const std::string path = kDir + "malicious.pt";
  const std::string message = error_of(path);
  EXPECT_NE(message.find("os.system"), std::string::npos) << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(TorchCheckpoint, ReportsMissingNonZipAndTruncatedFiles) {
  const std::string missing = kDir + "no_such_file.pt";
  EXPECT_NE(error_of(missing).find(missing), std::string::npos);

  const std::string legacy = temp_path("legacy.pt");
  {
    std::ofstream out(legacy, std::ios::binary);
    out << "\x80\x02\x8a\x0alegacy torch.save magic";
  }
  EXPECT_NE(error_of(legacy).find("not a zip-format torch.save file"), std::string::npos);
  std::remove(legacy.c_str());

  const std::string truncated = temp_path("truncated.pt");
  {
    std::ifstream in(kDir + "bare_state_dict.pt", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(truncated, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  const std::string message = error_of(truncated);
  EXPECT_NE(message.find(truncated), std::string::npos) << message;
  EXPECT_EQ(message.find("frame #"), std::string::npos) << "no C++ backtrace in the message";
  std::remove(truncated.c_str());
}

}  // namespace

namespace {

// The author's tiny model (tests/fixtures/mass_tiny, tools/make_mass_fixtures.py):
// every state-dict key and shape listed in meta.json, in order.
TEST(TorchCheckpoint, ReadsTheMassTinyModelWithEveryKeyOfMetaJson) {
  const std::string dir = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/mass_tiny/";
  std::ifstream meta(dir + "meta.json");
  ASSERT_TRUE(meta);
  // meta.json writes one {"key": ..., "shape": [...], ...} object per line.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  std::string line;
  const std::string key_tag = "{\"key\": \"", shape_tag = "\", \"shape\": [";
  while (std::getline(meta, line)) {
    const auto key_at = line.find(key_tag);
    if (key_at == std::string::npos) continue;
    const auto key_end = line.find(shape_tag, key_at);
    ASSERT_NE(key_end, std::string::npos) << line;
    const auto shape_end = line.find(']', key_end);
    std::string key = line.substr(key_at + key_tag.size(), key_end - key_at - key_tag.size());
    std::istringstream dims(line.substr(key_end + shape_tag.size(), shape_end - key_end - shape_tag.size()));
    std::vector<int64_t> shape;
    std::string dim;
    while (std::getline(dims, dim, ',')) shape.push_back(std::stoll(dim));
    expected.emplace_back(std::move(key), std::move(shape));
  }
  ASSERT_GT(expected.size(), 500u);

  const auto checkpoint = iris::read_torch_checkpoint(dir + "model.pt");
  ASSERT_EQ(checkpoint.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(checkpoint.tensors[i].first, expected[i].first);
    EXPECT_EQ(checkpoint.tensors[i].second.sizes().vec(), expected[i].second) << expected[i].first;
    EXPECT_EQ(checkpoint.tensors[i].second.scalar_type(), at::kFloat) << expected[i].first;
  }
}

}  // namespace
