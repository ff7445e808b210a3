// Runs the built iris-eval program on real label maps (the AAL atlas of
// mricron-data and shifted copies) and checks exit codes, messages and files.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include <ATen/ATen.h>

#include "../support/test_support.h"
#include "iris/eval/evaluation.h"
#include "iris/eval/rsna.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

const char* kAtlas = "/usr/share/mricron/templates/aal.nii.gz";

std::string eval_program() { return iris::testing::program_path("iris-eval"); }

using RunResult = iris::testing::ProgramRun;

RunResult run(const std::string& arguments, const fs::path& log) {
  return iris::testing::run_program(eval_program(), arguments, log.string());
}

std::string shell_quoted(const fs::path& p) { return "'" + p.string() + "'"; }

class IrisEvalCli : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_DATA(kAtlas);
    ASSERT_TRUE(fs::exists(eval_program())) << eval_program() << " not built";
    root = fs::temp_directory_path() / ("iris_eval_cli_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "gt");
    fs::create_directories(root / "pred");
    atlas = iris::io::read_labels(kAtlas);
  }
  void TearDown() override {
    if (!root.empty()) fs::remove_all(root);
  }
  void write(const iris::io::Image& image, const fs::path& path) {
    iris::io::write_image(image, path.string());
  }
  iris::io::Image shifted(int64_t dz, int64_t dy, int64_t dx) const {
    iris::io::Image copy = atlas;
    copy.voxels = at::roll(atlas.voxels, {dz, dy, dx}, {0, 1, 2}).contiguous();
    return copy;
  }
  fs::path root;
  iris::io::Image atlas;
};

TEST_F(IrisEvalCli, RealMapsGiveExitZeroAndTheInProcessSummary) {
  write(atlas, root / "gt" / "brain_01.nii.gz");
  write(shifted(3, -1, 2), root / "pred" / "brain_01.nii.gz");
  const fs::path summary_path = root / "summary.json", csv_path = root / "metrics.csv";
  const RunResult r = run("--reference " + shell_quoted(root / "gt") + " --prediction " + shell_quoted(root / "pred") +
                              " --output " + shell_quoted(summary_path) + " --csv " + shell_quoted(csv_path) +
                              " --labels 1,2,45",
                          root / "log.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(summary_path));
  ASSERT_TRUE(fs::exists(csv_path));

  // The file is valid JSON (Python's parser, which also accepts NaN as nnU-Net
  // writes it) and carries label 45's Dice, counted here voxel by voxel from
  // the two files the program read.
  const at::Tensor ref45 = iris::io::read_labels((root / "gt" / "brain_01.nii.gz").string()).voxels.eq(45);
  const at::Tensor pred45 = iris::io::read_labels((root / "pred" / "brain_01.nii.gz").string()).voxels.eq(45);
  const long tp = (ref45 & pred45).sum().item<long>();
  const double dice_45 = 2.0 * tp / (ref45.sum().item<long>() + pred45.sum().item<long>());
  ASSERT_GT(dice_45, 0.2);
  ASSERT_LT(dice_45, 0.95);  // the shift really changes the overlap
  const fs::path check = root / "check.txt";
  const std::string python =
      "python3 -c \"import json,sys; d=json.load(open(sys.argv[1])); "
      "print(len(d['metric_per_case']), sorted(d['mean']), repr(d['metric_per_case'][0]['metrics']['45']['Dice']), "
      "d['metric_per_case'][0]['metrics']['45']['TP'])\" " +
      shell_quoted(summary_path) + " > " + shell_quoted(check) + " 2>&1";
  ASSERT_EQ(std::system(python.c_str()), 0);
  std::ifstream in(check);
  std::string cases, labels, dice_text;
  long tp_json = -1;
  in >> cases;
  std::getline(in, labels, ']');
  in >> dice_text >> tp_json;
  EXPECT_EQ(cases, "1");
  EXPECT_EQ(labels, " ['1', '2', '45'");
  EXPECT_NEAR(std::stod(dice_text), dice_45, 1e-12);
  EXPECT_EQ(tp_json, tp);
  // Console table: one row per label.
  EXPECT_NE(r.output.find("45 "), std::string::npos) << r.output;
}

// The console table alone is a normal use: no --output needed. The HTML box
// plot names its labels with --label-names.
TEST_F(IrisEvalCli, TheConsoleTableAloneNeedsNoOutputAndThePlotNamesItsLabels) {
  write(atlas, root / "gt" / "brain_01.nii.gz");
  write(shifted(1, 0, 0), root / "pred" / "brain_01.nii.gz");
  RunResult r = run("--reference " + shell_quoted(root / "gt") + " --prediction " + shell_quoted(root / "pred") +
                        " --labels 1,2",
                    root / "log.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Dice"), std::string::npos) << r.output;
  // stdout is the table alone, for pipes; log lines go to stderr.
  const std::string split = eval_program() + " --reference " + shell_quoted(root / "gt") + " --prediction " +
                            shell_quoted(root / "pred") + " --labels 1,2 > " + shell_quoted(root / "stdout.txt") +
                            " 2> " + shell_quoted(root / "stderr.txt");
  ASSERT_EQ(std::system(split.c_str()), 0);
  std::ifstream out_file(root / "stdout.txt"), err_file(root / "stderr.txt");
  const std::string out((std::istreambuf_iterator<char>(out_file)), {}), err((std::istreambuf_iterator<char>(err_file)), {});
  EXPECT_NE(out.find("Dice"), std::string::npos) << out;
  EXPECT_EQ(out.find("[info]"), std::string::npos) << out;
  EXPECT_NE(err.find("[info]"), std::string::npos) << err;  // "evaluating 1 case(s)"
  std::ofstream(root / "names.txt") << "1 Precentral_L\n2 Precentral_R\n";
  r = run("--reference " + shell_quoted(root / "gt") + " --prediction " + shell_quoted(root / "pred") +
              " --label-names " + shell_quoted(root / "names.txt") + " --html " + shell_quoted(root / "report"),
          root / "log2.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream html(root / "report" / "index.html");
  const std::string text((std::istreambuf_iterator<char>(html)), {});
  const std::string plot = text.substr(text.find("<svg"), text.find("</svg>") - text.find("<svg"));
  EXPECT_NE(plot.find(">1 Precentral_L</text>"), std::string::npos) << plot;
  EXPECT_NE(plot.find(">2 Precentral_R</text>"), std::string::npos) << plot;
}

TEST_F(IrisEvalCli, GeometryMismatchFailsNamingBothFilesAndWritesNothing) {
  write(atlas, root / "gt" / "brain_01.nii.gz");
  iris::io::Image other_spacing = atlas;
  other_spacing.geometry.spacing = {1.0, 1.0, 1.5};
  write(other_spacing, root / "pred" / "brain_01.nii.gz");
  const fs::path summary_path = root / "summary.json";
  const RunResult r = run("--reference " + shell_quoted(root / "gt") + " --prediction " + shell_quoted(root / "pred") +
                              " --output " + shell_quoted(summary_path) + " --html " + shell_quoted(root / "report"),
                          root / "log.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find((root / "gt" / "brain_01.nii.gz").string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find((root / "pred" / "brain_01.nii.gz").string()), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(summary_path));
  EXPECT_FALSE(fs::exists(root / "report"));
}

TEST_F(IrisEvalCli, MissingPredictionCaseFailsNamingTheCase) {
  write(atlas, root / "gt" / "brain_01.nii.gz");
  write(atlas, root / "gt" / "brain_02.nii.gz");
  write(atlas, root / "pred" / "brain_01.nii.gz");
  const fs::path summary_path = root / "summary.json";
  const RunResult r = run("--reference " + shell_quoted(root / "gt") + " --prediction " + shell_quoted(root / "pred") +
                              " --output " + shell_quoted(summary_path),
                          root / "log.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("brain_02"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(summary_path));
}

TEST_F(IrisEvalCli, RsnaModeWritesTheWeightedAuc) {
  // 4 series. "Aneurysm Present": positives s1 (0.9), s2 (0.3), negatives s3
  // (0.4), s4 (0.1): 3 of 4 pairs ordered, AUC 0.75. Location columns: s1
  // positive and ranked first, AUC 1; "Basilar Tip" has no positive, so it
  // is excluded and the mean is (13 * 0.75 + 12 * 1) / 25 = 0.87.
  const auto& columns = iris::eval::rsna_label_columns();
  std::ofstream truth(root / "truth.csv"), predictions(root / "predictions.csv");
  truth << "SeriesInstanceUID,PatientAge";
  for (const auto& c : columns) truth << "," << c;
  truth << "\n";
  const std::vector<std::string> series{"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"};
  for (size_t s = 0; s < series.size(); ++s) {
    truth << series[s] << ",60";
    for (const auto& c : columns) {
      const bool positive = c == iris::eval::kRsnaPresentColumn ? s < 2 : (c != "Basilar Tip" && s == 0);
      truth << "," << (positive ? 1 : 0);
    }
    truth << "\n";
  }
  // Predictions list the columns and the series in another order.
  predictions << "\"Aneurysm Present\"";
  for (const auto& c : columns)
    if (c != iris::eval::kRsnaPresentColumn) predictions << "," << c;
  predictions << ",SeriesInstanceUID\r\n";
  const double present_score[4] = {0.9, 0.3, 0.4, 0.1};
  for (size_t s = series.size(); s-- > 0;) {
    predictions << present_score[s];
    for (const auto& c : columns)
      if (c != iris::eval::kRsnaPresentColumn) predictions << "," << (s == 0 ? 0.8 : 0.2);
    predictions << "," << series[s] << "\r\n";
  }
  truth.close();
  predictions.close();
  const fs::path json = root / "rsna.json";
  const RunResult r = run("rsna --predictions " + shell_quoted(root / "predictions.csv") + " --truth " +
                              shell_quoted(root / "truth.csv") + " --output " + shell_quoted(json),
                          root / "log.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Basilar Tip"), std::string::npos);
  EXPECT_NE(r.output.find("excluded"), std::string::npos) << r.output;
  const fs::path check = root / "check.txt";
  const std::string python =
      "python3 -c \"import json,sys; d=json.load(open(sys.argv[1])); "
      "print(round(d['weighted_auc'], 12), d['columns']['Aneurysm Present']['auc'], d['excluded_columns'], d['series'])\" " +
      shell_quoted(json) + " > " + shell_quoted(check) + " 2>&1";
  ASSERT_EQ(std::system(python.c_str()), 0);
  std::ifstream in(check);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "0.87 0.75 ['Basilar Tip'] 4");

  // Predictions without the label columns fail and say which are missing.
  std::ofstream(root / "short.csv") << "SeriesInstanceUID\n";
  const RunResult bad = run("rsna --predictions " + shell_quoted(root / "short.csv") + " --truth " +
                                shell_quoted(root / "truth.csv"),
                            root / "log2.txt");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("missing column"), std::string::npos) << bad.output;
}

}  // namespace
