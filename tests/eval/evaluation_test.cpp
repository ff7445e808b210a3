// Folder matching, geometry checks and the summary formats, on files written
// to a temporary folder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/eval/evaluation.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace iris::eval {
namespace {

class EvaluationFolders : public ::testing::Test {
 protected:
  void SetUp() override {
    root = fs::temp_directory_path() / ("iris_eval_test_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "gt");
    fs::create_directories(root / "pred");
  }
  void TearDown() override { fs::remove_all(root); }

  void write(const fs::path& path, const at::Tensor& labels, std::array<double, 3> spacing = {1, 1, 2}) {
    io::Image image;
    image.voxels = labels;
    image.geometry.size = {labels.size(2), labels.size(1), labels.size(0)};
    image.geometry.spacing = spacing;
    io::write_image(image, path.string());
  }
  fs::path root;
};

at::Tensor cube_map(int64_t offset_x) {
  at::Tensor t = at::zeros({8, 10, 12}, at::kInt);
  t.slice(0, 2, 6).slice(1, 2, 6).slice(2, 2 + offset_x, 6 + offset_x).fill_(1);
  return t;
}

TEST_F(EvaluationFolders, MatchesByCaseNameAndWritesNnUNetSchema) {
  write(root / "gt" / "case_001.nii.gz", cube_map(0));
  write(root / "pred" / "case_001.nii.gz", cube_map(1));  // Dice 0.75
  at::Tensor both = cube_map(0);
  both.slice(0, 6, 8).fill_(2);
  write(root / "gt" / "case_002.nii.gz", both);
  write(root / "pred" / "case_002.nii.gz", both);  // perfect, label 2 only here
  std::ofstream(root / "gt" / "notes.txt") << "not an image";

  const auto pairs = match_cases((root / "gt").string(), (root / "pred").string());
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].case_name, "case_001");
  const EvaluationSummary summary = evaluate(pairs, {});
  ASSERT_EQ(summary.labels, (std::vector<int32_t>{1, 2}));
  ASSERT_EQ(summary.cases[0].labels.size(), 2u);
  EXPECT_DOUBLE_EQ(summary.cases[0].labels[0].dice, 0.75);
  // Label 2 is absent from case 1 in both maps: NaN, skipped by the mean.
  EXPECT_TRUE(std::isnan(summary.cases[0].labels[1].dice));
  EXPECT_DOUBLE_EQ(mean_std_over_cases(summary, 1, "Dice").mean, (0.75 + 1.0) / 2);
  EXPECT_DOUBLE_EQ(mean_std_over_cases(summary, 1, "Dice").std, 0.125);
  EXPECT_EQ(mean_std_over_cases(summary, 2, "Dice").count, 1);

  const std::string json = summary_json(summary);
  EXPECT_NE(json.find("\"metric_per_case\": ["), std::string::npos);
  EXPECT_NE(json.find("\"foreground_mean\": {"), std::string::npos);
  EXPECT_NE(json.find("\"Dice\": 0.75,"), std::string::npos);
  EXPECT_NE(json.find("\"Dice\": NaN,"), std::string::npos);
  EXPECT_NE(json.find("\"TP\": 48,"), std::string::npos);  // integer, as nnU-Net writes it
  EXPECT_NE(json.find("\"n_ref\": 64"), std::string::npos);
  EXPECT_NE(json.find("\"Dice\": 0.875,"), std::string::npos);  // mean of label 1
  // foreground_mean Dice = mean of label means (0.875 and 1.0).
  const auto fg = json.find("\"foreground_mean\"");
  EXPECT_NE(json.find("\"Dice\": 0.9375,", fg), std::string::npos);
  EXPECT_NE(json.find("case_002.nii.gz\""), std::string::npos);

  const std::string csv = metrics_csv(summary);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 2 * 2);
  EXPECT_EQ(csv.rfind("case,reference_file,prediction_file,label,label_name,Dice,IoU", 0), 0u);
  EXPECT_NE(console_table(summary).find("0.8750 ± 0.1250"), std::string::npos);
}

TEST_F(EvaluationFolders, MissingPredictionIsNamed) {
  write(root / "gt" / "case_001.nii.gz", cube_map(0));
  write(root / "gt" / "case_007.nii.gz", cube_map(0));
  write(root / "pred" / "case_001.nii.gz", cube_map(0));
  try {
    match_cases((root / "gt").string(), (root / "pred").string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("case_007"), std::string::npos) << e.what();
  }
}

TEST_F(EvaluationFolders, GeometryMismatchNamesBothFiles) {
  write(root / "gt" / "a.nii.gz", cube_map(0), {1, 1, 2});
  write(root / "pred" / "a.nii.gz", cube_map(0), {1, 1, 3});
  write(root / "gt" / "b.nii.gz", cube_map(0));
  write(root / "pred" / "b.nii.gz", cube_map(0));
  try {
    evaluate(match_cases((root / "gt").string(), (root / "pred").string()), {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find((root / "gt" / "a.nii.gz").string()), std::string::npos) << what;
    EXPECT_NE(what.find((root / "pred" / "a.nii.gz").string()), std::string::npos) << what;
    EXPECT_EQ(what.find("b.nii.gz"), std::string::npos) << what;
  }
}

TEST(JsonNumber, WritesLikePythonJson) {
  EXPECT_EQ(python_number(1.0), "1.0");
  EXPECT_EQ(python_number(0.1), "0.1");
  EXPECT_EQ(python_number(std::nan("")), "NaN");
  EXPECT_EQ(python_number(INFINITY), "Infinity");
  EXPECT_EQ(python_number(2.0 / 3.0), "0.6666666666666666");
  // The same numbers in JSON (nlohmann), with Python's spelling of the non-finite ones.
  const iris::Json j = {{"a", iris::number(1.0)}, {"b", iris::number(std::nan(""))}, {"c", iris::number(-INFINITY)},
                        {"d", iris::number(2.0 / 3.0)}, {"e", "x\ty\"z"}};
  EXPECT_EQ(iris::dump(j, -1, true), "{\"a\":1.0,\"b\":NaN,\"c\":-Infinity,\"d\":0.6666666666666666,\"e\":\"x\\ty\\\"z\"}\n");
  EXPECT_EQ(iris::dump(j, -1, false), "{\"a\":1.0,\"b\":null,\"c\":null,\"d\":0.6666666666666666,\"e\":\"x\\ty\\\"z\"}\n");
}

TEST(LabelInput, ParsesListsAndNames) {
  EXPECT_EQ(parse_label_list("1,2, 5"), (std::vector<int32_t>{1, 2, 5}));
  EXPECT_THROW(parse_label_list("1,x"), Error);
  const auto path = fs::temp_directory_path() / "iris_eval_label_names.txt";
  std::ofstream(path) << "# organs\n1 liver\n2,left kidney\n";
  const auto names = read_label_names(path.string());
  EXPECT_EQ(names.at(1), "liver");
  EXPECT_EQ(names.at(2), "left kidney");
  fs::remove(path);
}

}  // namespace
}  // namespace iris::eval
