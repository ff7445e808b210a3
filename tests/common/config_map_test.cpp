// Configuration layering and the YAML subset reader of builds without yaml-cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "iris/common/config_map.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "support/test_support.h"

using namespace iris;

TEST(ConfigMap, OverridesLayerOnTopAndNameTheirOrigin) {
  ConfigMap m = ConfigMap::parse_text("train.lr: 0.002\ntrain.batch: 32\n", "base.yaml");
  m.apply_override("train.lr=1e-3");
  EXPECT_EQ(m.get("train.lr"), "1e-3");
  // An override is a setting ({overrides}: each program names its flag for it).
  EXPECT_EQ(m.origin("train.lr"), "{overrides}");
  EXPECT_EQ(m.origin("train.batch"), "base.yaml");
  EXPECT_EQ(m.subtree("train").get("batch"), "32");
  EXPECT_THROW(m.apply_override("novalue"), SettingError);
  // A bad value names where it came from: the setting, or the file.
  m.apply_override("train.lr=fast");
  try {
    config_double(m, "train.lr");
    ADD_FAILURE() << "a word read as a number";
  } catch (const SettingError& e) {
    EXPECT_EQ(e.setting(), "overrides");
    EXPECT_EQ(std::string(e.what()), "overrides: train.lr: expected a finite number, got 'fast'");
  }
  ConfigMap from_file = ConfigMap::parse_text("train.lr: fast\n", "base.yaml");
  EXPECT_EQ(iris::testing::error_of([&] { config_double(from_file, "train.lr"); }),
            "base.yaml: train.lr: expected a finite number, got 'fast'");
  EXPECT_EQ(nearest_word("spacng", {"spacing", "intensity"}), "spacing");
  EXPECT_EQ(nearest_word("zzzzzz", {"spacing", "intensity"}), "");
}

#if IRIS_HAVE_YAML
// Only where yaml-cpp is built in: without it read_yaml_file is the subset
// reader itself, and the comparison would be with itself.
TEST(ConfigMap, YamlSubsetReaderAgreesWithYamlCppOnTheShippedConfigs) {
  // Every config in configs/ reads the same with and without yaml-cpp (each
  // file as written: includes are resolved the same way by both).
  for (const auto& entry : std::filesystem::recursive_directory_iterator(std::string(IRIS_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    std::ifstream f(entry.path());
    std::stringstream ss;
    ss << f.rdbuf();
    const ConfigMap subset = ConfigMap::parse_yaml_subset(ss.str(), entry.path().string());
    const ConfigMap full = ConfigMap::read_yaml_file(entry.path().string());
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

// "key:" with nothing under it: yaml-cpp reads a null, set as ""; so does
// the subset reader (it used to drop the key).
TEST(ConfigMap, YamlSubsetReaderKeepsAKeyWithNothingUnderIt) {
  const ConfigMap m = ConfigMap::parse_yaml_subset("a:\n  b:\n  c: 1\nd:   # nothing\ne:\n", "hand.yaml");
  const std::map<std::string, std::string> expected{{"a.b", ""}, {"a.c", "1"}, {"d", ""}, {"e", ""}};
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

namespace {
// Writes `text` to dir/rel and returns its path.
std::string write_file(const std::filesystem::path& dir, const std::string& rel, const std::string& text) {
  std::filesystem::create_directories((dir / rel).parent_path());
  std::ofstream(dir / rel) << text;
  return (dir / rel).string();
}

std::string load_error(const std::string& path) {
  return iris::testing::error_of([&] { ConfigMap::load_yaml_file(path); });
}
}  // namespace

// `include:` loads the named files first, in order, relative to the including
// file (not to the working directory); the file's own keys win, and every key
// keeps the file it came from.
TEST(ConfigMap, IncludeLoadsTheNamedFilesFirstAndTheIncludingFileWins) {
  const auto dir = iris::testing::temp_folder("config_include");
  write_file(dir, "base/a.yaml", "model:\n  preset: small\ntrain:\n  lr: 0.002\n  batch: 2\n");
  write_file(dir, "base/b.yaml", "include: a.yaml\ntrain:\n  lr: 0.005\ndata:\n  datasets:\n    toy:\n      weight: 1.0\n");
  const std::string child = write_file(dir, "run/child.yaml",
                                      "# a comment\ninclude: [../base/a.yaml, ../base/b.yaml]\ntrain:\n  lr: 0.001\n"
                                      "  seed: 7\ndata:\n  datasets:\n    toy:\n      weight: 1.5\n");
  const ConfigMap m = ConfigMap::load_yaml_file(child);
  const std::map<std::string, std::string> expected{{"model.preset", "small"},
                                                    {"train.lr", "0.001"},
                                                    {"train.batch", "2"},
                                                    {"train.seed", "7"},
                                                    {"data.datasets.toy.weight", "1.5"}};
  EXPECT_EQ(m.entries(), expected);
  EXPECT_NE(m.origin("train.batch").find("a.yaml"), std::string::npos) << m.origin("train.batch");
  EXPECT_NE(m.origin("train.lr").find("child.yaml"), std::string::npos) << m.origin("train.lr");

  // Without its own lr, the later include (b over a) decides.
  const std::string plain = write_file(dir, "run/plain.yaml", "include: [../base/a.yaml, ../base/b.yaml]\n");
  const ConfigMap p = ConfigMap::load_yaml_file(plain);
  EXPECT_EQ(p.get("train.lr"), "0.005");
  EXPECT_NE(p.origin("train.lr").find("b.yaml"), std::string::npos) << p.origin("train.lr");
  EXPECT_FALSE(p.has("include"));
  // read_yaml_file gives the file as written.
  EXPECT_EQ(ConfigMap::read_yaml_file(plain).entries(),
            (std::map<std::string, std::string>{{"include", "[../base/a.yaml, ../base/b.yaml]"}}));
}

// A diamond is not a loop: a file included along several paths is read once.
// Sixteen levels, each including the next twice, name 2^15 paths to the last
// file; iris reads 16 files (more than 256 reads would be an error).
TEST(ConfigMap, IncludeDiamondsReadEachFileOnce) {
  const auto dir = iris::testing::temp_folder("config_include_diamond");
  for (int i = 0; i < 15; ++i)
    write_file(dir, "d" + std::to_string(i) + ".yaml",
               "include: [d" + std::to_string(i + 1) + ".yaml, ./d" + std::to_string(i + 1) + ".yaml]\ntrain:\n  k" +
                   std::to_string(i) + ": " + std::to_string(i) + "\n");
  write_file(dir, "d15.yaml", "train:\n  leaf: 1\n");
  const ConfigMap m = ConfigMap::load_yaml_file((dir / "d0.yaml").string());
  EXPECT_EQ(m.entries().size(), 16u);
  EXPECT_EQ(m.get("train.leaf"), "1");
  EXPECT_EQ(m.get("train.k14"), "14");
  // Many distinct files are still capped.
  std::string list;
  for (int i = 0; i < 300; ++i) {
    write_file(dir, "many/f" + std::to_string(i) + ".yaml", "train:\n  f" + std::to_string(i) + ": 1\n");
    list += (i ? ", " : "") + std::string("f") + std::to_string(i) + ".yaml";
  }
  const std::string top = write_file(dir, "many/top.yaml", "include: [" + list + "]\n");
  try {
    ConfigMap::load_yaml_file(top);
    ADD_FAILURE() << "300 included files were read";
  } catch (const iris::Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than 256 files"), std::string::npos) << e.what();
  }
}

TEST(ConfigMap, IncludeRefusesLoopsMissingFilesAndMaps) {
  const auto dir = iris::testing::temp_folder("config_include_bad");
  const std::string self = write_file(dir, "base/self.yaml", "include: self.yaml\ntrain:\n  lr: 1\n");
  std::string e = load_error(self);
  EXPECT_NE(e.find("loop"), std::string::npos) << e;

  write_file(dir, "base/x.yaml", "include: y.yaml\n");
  const std::string y = write_file(dir, "base/y.yaml", "include: x.yaml\n");
  e = load_error(y);
  EXPECT_NE(e.find("loop"), std::string::npos) << e;
  EXPECT_NE(e.find("x.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("y.yaml"), std::string::npos) << e;

  // Relative to the including file: run/missing.yaml's "a.yaml" is run/a.yaml,
  // not base/a.yaml, and the error names both files.
  write_file(dir, "base/a.yaml", "train:\n  lr: 1\n");
  const std::string missing = write_file(dir, "run/missing.yaml", "include: a.yaml\n");
  e = load_error(missing);
  EXPECT_NE(e.find("missing.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find((dir / "run" / "a.yaml").string()), std::string::npos) << e;

  // An include with nothing after it is an error in both readers, not ignored.
  const std::string empty = write_file(dir, "run/empty.yaml", "include:   # base.yaml\ntrain:\n  lr: 1\n");
  e = load_error(empty);
  EXPECT_NE(e.find("empty.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("include: expected a file"), std::string::npos) << e;

  const std::string as_map = write_file(dir, "run/map.yaml", "include:\n  file: ../base/a.yaml\n");
  e = load_error(as_map);
  EXPECT_NE(e.find("map.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("include"), std::string::npos) << e;
}

// The shipped toy-mix config is written as the clean config plus the toy
// dataset (configs/data/toy.yaml) plus its own keys; what it resolves to,
// against values written out here from those files.
TEST(ConfigMap, TheToyMixConfigResolvesToTheCleanConfigPlusTheToy) {
  const std::string dir = std::string(IRIS_SOURCE_DIR) + "/configs/";
  const ConfigMap m = ConfigMap::load_yaml_file(dir + "train/demo_brain_toymix.yaml");
  EXPECT_FALSE(m.has("include"));
  // Its own keys.
  EXPECT_EQ(m.get("train.init_from"), "build/toy/train/model.iris");
  EXPECT_EQ(m.get("train.lr"), "0.001");
  EXPECT_EQ(m.get("train.warmup"), "30");
  EXPECT_EQ(m.get("train.seed"), "21");
  EXPECT_EQ(m.get("train.output_dir"), "build/demo/train_toymix");
  EXPECT_EQ(m.get("data.datasets.toy.weight"), "1.5");
  // From the clean config.
  EXPECT_EQ(m.get("train.iterations"), "3000");
  EXPECT_EQ(m.get("preprocess.spacing"), "[4, 4, 4]");
  EXPECT_EQ(m.get("data.datasets.atlas_aal.held_out"), "[37, 38, 39, 40, 41, 42]");
  EXPECT_EQ(m.get("data.datasets.atlas_aicha.held_out"), "[73, 103, 166, 167]");
  EXPECT_EQ(m.get("data.datasets.atlas_jhu.held_out_anatomy_fraction"), "0.15");
  // From the toy dataset.
  EXPECT_EQ(m.get("data.datasets.toy.root"), "build/toy");
  EXPECT_EQ(m.get("data.datasets.toy.deformation_voxels"), "2");
  EXPECT_EQ(config_list_items(m.get("data.datasets.toy.cases")).size(), 8u);
  // Seven datasets, no more.
  const ConfigMap all_datasets = m.subtree("data.datasets");
  std::set<std::string> datasets;
  for (const auto& [k, v] : all_datasets.entries()) datasets.insert(k.substr(0, k.find('.')));
  EXPECT_EQ(datasets, (std::set<std::string>{"atlas_aal", "atlas_aicha", "atlas_brodmann", "atlas_jhu", "brain",
                                              "structures", "toy"}));
}

// The clean config is written as the shipped model's last stage plus its own
// keys; what it resolves to, against values written out here from the whole
// file it was before (commit 9f11b80), so that a change to the stage chain
// that would change the clean run fails here.
TEST(ConfigMap, TheCleanConfigResolvesToItsWholeFormerSelf) {
  const std::string dir = std::string(IRIS_SOURCE_DIR) + "/configs/";
  const ConfigMap m = ConfigMap::load_yaml_file(dir + "train/demo_brain_clean.yaml");
  EXPECT_EQ(m.get("model.channels"), "[8, 16, 32, 32, 64]");
  EXPECT_EQ(m.get("model.query_tokens"), "6");
  EXPECT_EQ(m.get("preprocess.crop_margin_mm"), "12");
  EXPECT_EQ(m.get("train.iterations"), "3000");
  EXPECT_EQ(m.get("train.init_from"), "build/demo/stage1.iris");
  EXPECT_EQ(m.get("train.lr"), "0.0015");
  EXPECT_EQ(m.get("train.warmup"), "50");
  EXPECT_EQ(m.get("train.max_classes"), "4");
  EXPECT_EQ(m.get("train.foreground_spread"), "0.7");
  EXPECT_EQ(m.get("train.weight_ema"), "0.98");
  EXPECT_EQ(m.get("train.output_dir"), "build/demo/train_clean");
  EXPECT_EQ(m.get("data.datasets.brain.cases"), "[colin27.nii.gz|colin_brain.nii.gz, mni152.nii.gz|mni_brain.nii.gz]");
  EXPECT_EQ(m.get("data.datasets.structures.weight"), "2.5");
  EXPECT_EQ(m.get("data.datasets.atlas_aal.weight"), "2.0");
  EXPECT_EQ(m.get("data.datasets.atlas_aal.held_out"), "[37, 38, 39, 40, 41, 42]");
  EXPECT_EQ(m.get("data.datasets.atlas_aicha.weight"), "1.6");
  EXPECT_EQ(m.get("data.datasets.atlas_aicha.union_max"), "4");
  EXPECT_EQ(m.get("data.datasets.atlas_brodmann.weight"), "1.0");
  EXPECT_EQ(m.get("data.datasets.atlas_brodmann.union_max"), "3");
  EXPECT_EQ(m.get("data.datasets.atlas_jhu.weight"), "0.6");
  for (const std::string atlas : {"atlas_brodmann", "atlas_jhu"}) {
    const std::string p = "data.datasets." + atlas + ".";
    EXPECT_EQ(m.get(p + "held_out_anatomy"), "atlas_aal.nii.gz") << atlas;
    EXPECT_EQ(m.get(p + "held_out_anatomy_values"), "[37, 38, 39, 40, 41, 42]") << atlas;
    EXPECT_EQ(m.get(p + "held_out_anatomy_fraction"), "0.15") << atlas;
    EXPECT_FALSE(m.has(p + "held_out")) << atlas;
  }
  EXPECT_EQ(m.entries().size(), 110u);  // as many keys as the whole file had
}

// --config and --set follow one rule in iris-import, iris-bench and
// iris-preprocess: keys as in a full config, section first; a bare key is the
// first section's; a file without the sections holds the first section's keys.
TEST(ConfigMap, ConfigSectionsFollowOneRuleInEveryProgram) {
  const auto dir = iris::testing::temp_folder("config_sections");
  // A full (training) config: its other sections are not read.
  const std::string full =
      write_file(dir, "full.yaml", "model:\n  head_dim: 8\ntrain:\n  lr: 0.1\npreprocess:\n  spacing: 2\n");
  auto read = read_config_sections(full, {"model.channels=[1, 2, 3, 4, 5]", "preprocess.intensity=ct", "mlp_ratio=2"},
                                   {"model", "preprocess"});
  EXPECT_EQ(read["model"].entries(), (std::map<std::string, std::string>{
                                         {"head_dim", "8"}, {"channels", "[1, 2, 3, 4, 5]"}, {"mlp_ratio", "2"}}));
  EXPECT_EQ(read["preprocess"].entries(),
            (std::map<std::string, std::string>{{"spacing", "2"}, {"intensity", "ct"}}));
  // The file (and, without yaml-cpp, its line).
  EXPECT_EQ(read["model"].origin("head_dim").rfind(full, 0), 0u) << read["model"].origin("head_dim");
  EXPECT_EQ(read["model"].origin("mlp_ratio"), "{overrides}");
  // A file of one section's keys alone (configs/model/*.yaml written flat).
  const std::string flat = write_file(dir, "flat.yaml", "head_dim: 16\nquery_tokens: 4\n");
  EXPECT_EQ(read_config_sections(flat, {"model.head_dim=4"}, {"model"})["model"].entries(),
            (std::map<std::string, std::string>{{"head_dim", "4"}, {"query_tokens", "4"}}));
  // The same file for a program whose first section is preprocess: its keys are preprocess keys.
  EXPECT_EQ(read_config_sections(flat, {}, {"preprocess", "model"})["preprocess"].get("head_dim"), "16");
  // A dotted key of a section this program does not read, a key outside the
  // sections beside them, and an override without '=' are refused.
  EXPECT_EQ(iris::testing::error_of([&] { read_config_sections("", {"train.lr=1"}, {"model"}); }),
            "overrides: 'train.lr=1': this program reads only the section model (write model.KEY=VALUE, or "
            "KEY=VALUE)");
  const std::string mixed = write_file(dir, "mixed.yaml", "head_dim: 8\nmodel:\n  channels: [1, 2, 3, 4, 5]\n");
  EXPECT_EQ(iris::testing::error_of([&] { read_config_sections(mixed, {}, {"model"}); }),
            mixed + ": key 'head_dim' stands outside any section, beside the sections model: put it under its section");
  EXPECT_THROW(read_config_sections("", {"model.head_dim"}, {"model"}), SettingError);
}
