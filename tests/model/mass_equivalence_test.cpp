// iris reproduces the author's PyTorch model: the fixtures in
// tests/fixtures/mass_tiny were produced by tools/make_mass_fixtures.py with
// Stanford-AIMI/MASS (see docs/fixtures.md); here the same weights are
// imported and the same inputs give the same task tokens and logits.
#include <gtest/gtest.h>

#include <fstream>

#include <torch/torch.h>

#include "iris/common/error.h"
#include "iris/model/checkpoint_import.h"
#include "support/float_file.h"
#include "iris/model/task_embedding.h"

using namespace iris::model;

namespace {

const std::string kDir = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/mass_tiny/";

at::Tensor load_bin(const std::string& name, std::vector<int64_t> shape) {
  return iris_test::read_float32_file(kDir + name, std::move(shape));
}

float max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<float>(); }

}  // namespace

TEST(MassEquivalence, InfersTheArchitectureFromTheCheckpoint) {
  auto model = import_mass_checkpoint(kDir + "model.pt", std::nullopt);
  const auto& c = model.config;
  EXPECT_EQ(c.channels, (std::vector<long>{8, 16, 32, 32, 64}));
  EXPECT_EQ(c.blocks_per_stage, (std::vector<long>{2, 2, 2, 2}));
  EXPECT_EQ(c.prior_stages, 3);
  EXPECT_EQ(c.query_tokens, 10);
  EXPECT_EQ(c.memory_bank_size, 5);
  EXPECT_EQ(c.max_patch_size, 32);
  EXPECT_EQ(c.mlp_ratio, 4);
  EXPECT_EQ(c.attention_blocks, 2);
  EXPECT_EQ(count_parameters(*model.net), 2805909);  // meta.json: tiny_param_count
}

TEST(MassEquivalence, TaskTokensAndLogitsMatchTheAuthorsModel) {
  torch::NoGradGuard g;
  auto model = import_mass_checkpoint(kDir + "model.pt", std::nullopt);
  auto query = load_bin("query_image.bin", {1, 1, 32, 32, 32});
  auto reference = load_bin("reference_image.bin", {1, 1, 32, 32, 32});
  auto masks = load_bin("reference_masks.bin", {1, 2, 32, 32, 32});

  auto features = model.net->encode_image(query);
  const long widths[] = {64, 32, 32, 16};
  const long sizes[] = {2, 4, 8, 16};
  for (int i = 0; i < 4; ++i) {
    auto expected = load_bin("query_features_" + std::to_string(i) + ".bin", {1, widths[i], sizes[i], sizes[i], sizes[i]});
    EXPECT_LE(max_abs_diff(features[i], expected), 1e-4) << "encoder level " << i;
  }

  auto tokens = model.net->encode_task_tokens(model.net->encode_image(reference), masks);
  const long stage_c[] = {64, 32, 32};
  for (int i = 0; i < 3; ++i) {
    auto expected = load_bin("task_tokens_" + std::to_string(i) + ".bin", {1, 2, 11, stage_c[i]});
    EXPECT_LE(max_abs_diff(tokens[i], expected), 1e-4) << "task tokens stage " << i;
  }
  auto logits = model.net->forward(query, reference, masks);
  auto expected = load_bin("logits.bin", {1, 2, 32, 32, 32});
  const float diff = max_abs_diff(logits, expected);
  std::printf("max |logits - MASS logits| = %.3g (logit range %.3g)\n", diff, expected.abs().max().item<float>());
  EXPECT_LE(diff, 1e-4);
}

TEST(MassEquivalence, MemoryBankPathMatches) {
  torch::NoGradGuard g;
  auto model = import_mass_checkpoint(kDir + "model.pt", std::nullopt);
  auto query = load_bin("query_image.bin", {1, 1, 32, 32, 32});
  auto tokens = model.net->memory_bank_tokens(torch::tensor({{0, 3}}));
  auto logits = model.net->decode(model.net->encode_image(query), tokens);
  EXPECT_LE(max_abs_diff(logits, load_bin("logits_memory_bank.bin", {1, 2, 32, 32, 32})), 1e-4);
}

TEST(MassEquivalence, MismatchedArchitectureListsTheProblems) {
  ModelConfig wrong = preset("tiny");
  try {
    import_mass_checkpoint(kDir + "model.pt", wrong);
    FAIL() << "import into the wrong architecture succeeded";
  } catch (const iris::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.pt"), std::string::npos);
    EXPECT_NE(msg.find("shape mismatches"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys"), std::string::npos) << msg;
  }
}
