// The numeric pieces of the HTML report: box plot statistics, the worst-first
// case order and the choice of the slice position; plus the folder handling
// of write_html_report on small synthetic maps.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/eval/report.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace iris::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(BoxStatistics, TukeyWhiskersAndOutliers) {
  // numpy: percentile([0.1,0.7,0.8,0.85,0.9], [25,50,75]) = 0.7, 0.8, 0.85;
  // IQR 0.15, fences 0.475 and 1.075: 0.1 is an outlier.
  const BoxStatistics b = box_statistics({0.9, 0.1, kNaN, 0.8, 0.85, 0.7});
  EXPECT_EQ(b.count, 5);
  EXPECT_NEAR(b.q1, 0.7, 1e-6);
  EXPECT_NEAR(b.median, 0.8, 1e-6);
  EXPECT_NEAR(b.q3, 0.85, 1e-6);
  EXPECT_NEAR(b.whisker_low, 0.7, 1e-6);
  EXPECT_NEAR(b.whisker_high, 0.9, 1e-6);
  ASSERT_EQ(b.outliers.size(), 1u);
  EXPECT_NEAR(b.outliers[0], 0.1, 1e-6);
  EXPECT_EQ(box_statistics({kNaN, kNaN}).count, 0);
}

CaseResult case_with(const std::string& name, std::vector<double> dice) {
  CaseResult c;
  c.files.case_name = name;
  for (size_t i = 0; i < dice.size(); ++i) {
    LabelMetrics m;
    m.label = static_cast<int32_t>(i + 1);
    m.dice = dice[i];
    c.labels.push_back(m);
  }
  return c;
}

TEST(CasesWorstFirst, ByMeanDiceSkippingNaN) {
  EvaluationSummary s;
  s.cases = {case_with("good", {0.9, 0.95}), case_with("empty", {kNaN, kNaN}),
             case_with("bad", {0.2, kNaN}), case_with("middle", {0.5, 0.7})};
  const std::vector<size_t> order = cases_worst_first(s);
  EXPECT_EQ(order, (std::vector<size_t>{2, 3, 0, 1}));
}

TEST(LargestError, LabelWithTheLargestHausdorffDistance) {
  CaseResult c = case_with("c", {0.5, 0.5, 0.0});
  c.labels[0].hausdorff_max_mm = 3;
  c.labels[0].worst_error_zyx = {1, 2, 3};
  c.labels[1].hausdorff_max_mm = 7;
  c.labels[1].worst_error_zyx = {4, 5, 6};
  c.labels[2].hausdorff_max_mm = kNaN;  // missed label: an error, no distance
  c.labels[2].worst_error_zyx = {7, 8, 9};
  EXPECT_EQ(largest_error_zyx(c), (std::array<int64_t, 3>{4, 5, 6}));
  c.labels.erase(c.labels.begin(), c.labels.begin() + 2);
  EXPECT_EQ(largest_error_zyx(c), (std::array<int64_t, 3>{7, 8, 9}));
  c.labels[0].worst_error_zyx = {-1, -1, -1};
  EXPECT_EQ(largest_error_zyx(c), (std::array<int64_t, 3>{-1, -1, -1}));
}

class ReportFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    root = fs::temp_directory_path() / ("iris_report_test_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root);
    at::Tensor ref = at::zeros({6, 20, 24}, at::kInt), pred = ref.clone();
    ref.slice(0, 1, 5).slice(1, 4, 14).slice(2, 4, 16).fill_(1);
    pred.slice(0, 1, 5).slice(1, 6, 16).slice(2, 4, 16).fill_(1);
    write(ref, root / "ref.nii.gz");
    write(pred, root / "pred.nii.gz");
    write(ref.to(at::kFloat) * 100, root / "image.nii.gz");
  }
  void TearDown() override { fs::remove_all(root); }
  void write(const at::Tensor& t, const fs::path& path) {
    io::Image image;
    image.voxels = t;
    image.geometry.size = {t.size(2), t.size(1), t.size(0)};
    image.geometry.spacing = {0.8, 0.8, 3.0};
    io::write_image(image, path.string());
  }
  EvaluationSummary summary() const {
    return evaluate(match_cases((root / "ref.nii.gz").string(), (root / "pred.nii.gz").string()), {});
  }
  fs::path root;
};

TEST_F(ReportFolder, ReplacesAnEarlierReportButNoOtherFolder) {
  const fs::path dir = root / "report";
  write_html_report(summary(), dir.string(), {(root / "image.nii.gz").string()});
  ASSERT_TRUE(fs::exists(dir / "index.html"));
  for (const char* view : {"axial", "coronal", "sagittal"})
    EXPECT_TRUE(fs::exists(dir / (std::string("001_ref_") + view + ".png"))) << view;
  write_html_report(summary(), dir.string() + "/");  // trailing slash, blank background
  EXPECT_TRUE(fs::exists(dir / "index.html"));
  EXPECT_TRUE(fs::exists(dir / ".iris-report")) << "the manifest of what iris wrote";
  // A file the user put into the report folder is never deleted.
  std::ofstream(dir / "notes.txt") << "mine";
  EXPECT_THROW(write_html_report(summary(), dir.string()), Error);
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
  EXPECT_TRUE(fs::exists(dir / "index.html"));
  fs::remove(dir / "notes.txt");
  // Only the report is left in the parent: no partial or old folders.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root)) entries += e.path().filename().string()[0] == '.';
  EXPECT_EQ(entries, 0);

  fs::create_directories(root / "precious");
  std::ofstream(root / "precious" / "data.txt") << "keep";
  EXPECT_THROW(write_html_report(summary(), (root / "precious").string()), Error);
  EXPECT_TRUE(fs::exists(root / "precious" / "data.txt"));
}

TEST_F(ReportFolder, ImageOnAnotherGridFailsAndLeavesNothing) {
  io::Image other;
  other.voxels = at::zeros({6, 20, 25}, at::kFloat);
  other.geometry.size = {25, 20, 6};
  io::write_image(other, (root / "other.nii.gz").string());
  try {
    write_html_report(summary(), (root / "report").string(), {(root / "other.nii.gz").string()});
    FAIL() << "expected a grid error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("other.nii.gz"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(root / "report"));
  int hidden = 0;
  for (const auto& e : fs::directory_iterator(root)) hidden += e.path().filename().string()[0] == '.';
  EXPECT_EQ(hidden, 0);
}

}  // namespace
}  // namespace iris::eval
