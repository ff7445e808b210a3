// The shipped class vocabulary (configs/classes.yaml): one class per
// structure across datasets that name it differently.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>

#include "iris/common/error.h"
#include "iris/data/class_vocabulary.h"

using namespace iris;
namespace fs = std::filesystem;

namespace {
const std::string kVocabulary = std::string(IRIS_TEST_DATA_DIR) + "/../configs/classes.yaml";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ClassVocabulary, SynonymsFromDifferentDatasetsBecomeOneClass) {
  const auto v = data::ClassVocabulary::load(kVocabulary);
  EXPECT_GT(v.size(), 40u);
  EXPECT_EQ(v.canonical("Right Kidney"), "kidney_right");
  EXPECT_EQ(v.canonical("kidney_right"), "kidney_right");
  EXPECT_EQ(v.canonical("RK"), "kidney_right");
  EXPECT_EQ(v.canonical("postcava"), "inferior_vena_cava");
  EXPECT_EQ(v.canonical("gall-bladder"), "gallbladder");
  EXPECT_EQ(v.canonical("LV"), "left_ventricle");
  EXPECT_EQ(v.canonical("tumor"), "") << "ambiguous words are no synonyms";
  EXPECT_EQ(data::ClassVocabulary::normalise("  Portal Vein  and-Splenic.Vein "), "portal_vein_and_splenic_vein");

  // AMOS-like, BCV-like and ACDC-like tables.
  data::DatasetSpec amos, bcv, acdc;
  amos.name = "amos";
  amos.class_names = {{1, "spleen"}, {2, "right kidney"}, {9, "postcava"}, {15, "prostate/uterus"}};
  bcv.name = "bcv";
  bcv.class_names = {{1, "spleen"}, {2, "kidney_right"}, {9, "inferior vena cava"}, {14, "mystery organ"}};
  acdc.name = "acdc";
  acdc.class_names = {{1, "RV"}, {2, "MYO"}, {3, "LV"}};
  std::vector<data::DatasetSpec> all{amos, bcv, acdc};
  const auto unknown = v.apply(all);
  EXPECT_EQ(unknown, (std::vector<std::string>{"mystery organ"}));
  EXPECT_EQ(all[0].class_names.at(2), "kidney_right");
  EXPECT_EQ(all[1].class_names.at(2), "kidney_right");
  EXPECT_EQ(all[0].class_names.at(9), all[1].class_names.at(9));
  EXPECT_EQ(all[2].class_names.at(2), "myocardium");
  const auto table = data::class_table(all);
  EXPECT_EQ(std::count(table.begin(), table.end(), "kidney_right"), 1);
  EXPECT_EQ(std::count(table.begin(), table.end(), "spleen"), 1);
}

TEST(ClassVocabulary, ConflictsAreErrorsNamingTheirSource) {
  const fs::path dir = fs::temp_directory_path() / ("iris_vocab_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "bad.yaml") << "liver: [hepatic]\nhepar: [hepatic]\n";
  const std::string twice = error_of([&] { data::ClassVocabulary::load((dir / "bad.yaml").string()); });
  EXPECT_NE(twice.find("bad.yaml"), std::string::npos) << twice;
  EXPECT_NE(twice.find("'hepatic'"), std::string::npos) << twice;
  const auto v = data::ClassVocabulary::load(kVocabulary);
  data::DatasetSpec d;
  d.name = "twice";
  d.class_names = {{1, "left kidney"}, {2, "LK"}};
  std::vector<data::DatasetSpec> one{d};
  const std::string merged = error_of([&] { v.apply(one); });
  EXPECT_NE(merged.find("data.datasets.twice"), std::string::npos) << merged;
  EXPECT_NE(merged.find("kidney_left"), std::string::npos) << merged;
  fs::remove_all(dir);
}
