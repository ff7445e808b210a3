// Every config key a user can write is documented: the key lists are the
// ones the parsers accept, and each must appear as `key` in its page.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "iris/data/dataset.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_config.h"
#include "iris/train/train_config.h"

namespace {

std::string page(const std::string& name) {
  std::ifstream in(std::string(IRIS_TEST_DATA_DIR) + "/../docs/" + name);
  EXPECT_TRUE(in) << "docs/" << name << " is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_documented(const std::vector<std::string>& keys, const std::string& name) {
  const std::string text = page(name);
  ASSERT_FALSE(keys.empty());
  std::string missing;
  for (const auto& k : keys)
    if (text.find("`" + k + "`") == std::string::npos && text.find("`" + k + ":") == std::string::npos &&
        text.find("." + k + "`") == std::string::npos)
      missing += " " + k;
  EXPECT_TRUE(missing.empty()) << "docs/" << name << " does not mention:" << missing;
}

}  // namespace

TEST(DocsKeys, TrainKeysAreInTrainingMd) { expect_documented(iris::train::TrainConfig::known_keys(), "training.md"); }
TEST(DocsKeys, DatasetKeysAreInTrainingMd) { expect_documented(iris::data::dataset_keys(), "training.md"); }
TEST(DocsKeys, ModelKeysAreInModelMd) { expect_documented(iris::model::ModelConfig::known_keys(), "model.md"); }
TEST(DocsKeys, PreprocessKeysAreInPreprocessingMd) {
  expect_documented(iris::io::PreprocessConfig::known_keys(), "preprocessing.md");
}
