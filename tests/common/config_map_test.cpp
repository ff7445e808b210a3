// Configuration layering and the YAML subset reader of builds without yaml-cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "iris/common/config_map.h"
#include "iris/common/error.h"

using namespace iris;

TEST(ConfigMap, OverridesLayerOnTopAndNameTheirOrigin) {
  ConfigMap m = ConfigMap::parse_text("train.lr: 0.002\ntrain.batch: 32\n", "base.yaml");
  m.apply_override("train.lr=1e-3");
  EXPECT_EQ(m.get("train.lr"), "1e-3");
  EXPECT_EQ(m.origin("train.lr"), "--set");
  EXPECT_EQ(m.origin("train.batch"), "base.yaml");
  EXPECT_EQ(m.subtree("train").get("batch"), "32");
  EXPECT_THROW(m.apply_override("novalue"), Error);
  EXPECT_EQ(nearest_word("spacng", {"spacing", "intensity"}), "spacing");
  EXPECT_EQ(nearest_word("zzzzzz", {"spacing", "intensity"}), "");
}

#if IRIS_HAVE_YAML
// Only where yaml-cpp is built in: without it load_yaml_file is the subset
// reader itself, and the comparison would be with itself.
TEST(ConfigMap, YamlSubsetReaderAgreesWithYamlCppOnTheShippedConfigs) {
  // Every config in configs/ reads the same with and without yaml-cpp.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(std::string(IRIS_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    std::ifstream f(entry.path());
    std::stringstream ss;
    ss << f.rdbuf();
    const ConfigMap subset = ConfigMap::parse_yaml_subset(ss.str(), entry.path().string());
    const ConfigMap full = ConfigMap::load_yaml_file(entry.path().string());
    ASSERT_FALSE(full.entries().empty()) << entry.path();
    EXPECT_EQ(subset.entries(), full.entries()) << entry.path();
  }
}
#endif

// The subset reader on the constructs the shipped configs use, against
// entries written out by hand.
TEST(ConfigMap, YamlSubsetReaderFlattensNestedMapsAndFlowLists) {
  const std::string text =
      "# comment\n"
      "model:\n"
      "  preset: small   # trailing comment\n"
      "  base_channels: 16\n"
      "data:\n"
      "  spacing: [3.0, 3.0, 3.0]\n"
      "  name: \"a: b\"\n"
      "  nested:\n"
      "    deep: yes\n"
      "train.lr: 0.003\n";
  const ConfigMap m = ConfigMap::parse_yaml_subset(text, "hand.yaml");
  const std::map<std::string, std::string> expected{{"model.preset", "small"},     {"model.base_channels", "16"},
                                                    {"data.spacing", "[3.0, 3.0, 3.0]"}, {"data.name", "a: b"},
                                                    {"data.nested.deep", "yes"},     {"train.lr", "0.003"}};
  EXPECT_EQ(m.entries(), expected);
}

TEST(ConfigMap, YamlSubsetReaderRefusesBlockLists) {
  try {
    ConfigMap::parse_yaml_subset("a:\n  - 1\n", "x.yaml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.yaml:2"), std::string::npos) << e.what();
  }
}
