// iris-data verify on a small nnU-Net raw dataset made from real volumes
// (MRIcron's Colin27 T1 and AAL atlas, every 6th voxel, a few structures
// relabelled 1-2): the clean folder passes; each kind of damage is found
// and names its file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>

#include "iris/io/image_io.h"
#include "iris/pipeline/dataset_check.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace iris;

namespace {

// Colin27 + AAL (37-38 -> 1, 41-42 -> 2) at every 6th voxel, shifted by
// `offset` voxels so that cases differ.
std::pair<Image, Image> brain_case(long offset) {
  using at::indexing::Slice;
  Image t1 = io::read_image(iris::testing::kMricronTemplates + "ch2.nii.gz");
  Image aal = io::read_labels(iris::testing::kMricronTemplates + "aal.nii.gz");
  auto every6 = [&](const at::Tensor& t) { return t.index({Slice(offset, c10::nullopt, 6), Slice(0, c10::nullopt, 6), Slice(0, c10::nullopt, 6)}).contiguous(); };
  t1.voxels = every6(t1.voxels);
  at::Tensor labels = every6(aal.voxels);
  at::Tensor mapped = at::zeros_like(labels);
  mapped.masked_fill_((labels == 37) | (labels == 38), 1);
  mapped.masked_fill_((labels == 41) | (labels == 42), 2);
  aal.voxels = mapped.to(at::kByte);
  for (Image* im : {&t1, &aal}) {
    im->geometry.size = {im->voxels.size(2), im->voxels.size(1), im->voxels.size(0)};
    for (auto& s : im->geometry.spacing) s *= 6;
  }
  aal.geometry = t1.geometry;
  return {t1, aal};
}

fs::path make_dataset(const fs::path& root) {
  for (const char* d : {"imagesTr", "labelsTr", "imagesTs"}) fs::create_directories(root / d);
  for (int i = 0; i < 3; ++i) {
    auto [image, labels] = brain_case(i);
    const std::string id = "brain_" + std::to_string(i);
    io::write_image(image, (root / "imagesTr" / (id + "_0000.nii.gz")).string());
    io::write_image(labels, (root / "labelsTr" / (id + ".nii.gz")).string());
  }
  io::write_image(brain_case(3).first, (root / "imagesTs" / "brain_9_0000.nii.gz").string());
  std::ofstream(root / "dataset.json") << R"({"channel_names": {"0": "T1"},
 "labels": {"background": 0, "hippocampus": 1, "amygdala": 2},
 "numTraining": 3, "file_ending": ".nii.gz"})";
  return root;
}

std::string problems_text(const pipeline::DatasetSummary& s) {
  std::string t;
  for (const auto& p : s.problems) t += p.file + ": " + p.problem + "\n";
  return t;
}

}  // namespace

TEST(IrisData, ACleanDatasetPassesAndEachDamageIsFoundByFile) {
  REQUIRE_DATA(iris::testing::kMricronTemplates + "aal.nii.gz");
  const fs::path root = make_dataset(iris::testing::temp_folder("iris_data") / "Dataset001_Brain");
  auto clean = pipeline::verify_raw_dataset(root.string());
  EXPECT_TRUE(clean.problems.empty()) << problems_text(clean);
  EXPECT_EQ(clean.training_cases, 3);
  EXPECT_EQ(clean.test_cases, 1);
  EXPECT_EQ(clean.channels, 1);
  const auto ok = iris::testing::run_program(iris::testing::program_path("iris-data"), "verify " + root.string(),
                                             (root.parent_path() / "ok.log").string());
  EXPECT_EQ(ok.exit_code, 0) << ok.output;

  // 1. A label map one voxel off in origin.
  Image shifted = io::read_labels((root / "labelsTr" / "brain_0.nii.gz").string());
  shifted.geometry.origin[0] += shifted.geometry.spacing[0];
  io::write_image(shifted, (root / "labelsTr" / "brain_0.nii.gz").string());
  // 2. An undeclared label value.
  Image extra = io::read_labels((root / "labelsTr" / "brain_1.nii.gz").string());
  extra.voxels[2][3][4] = 7;
  io::write_image(extra, (root / "labelsTr" / "brain_1.nii.gz").string());
  // 3. A truncated .nii.gz.
  const fs::path cut = root / "imagesTr" / "brain_2_0000.nii.gz";
  fs::resize_file(cut, fs::file_size(cut) / 2);
  // 4. A test case without its channel suffix, and a label without an image.
  fs::copy_file(root / "imagesTs" / "brain_9_0000.nii.gz", root / "imagesTs" / "brain_8.nii.gz");
  fs::copy_file(root / "labelsTr" / "brain_0.nii.gz", root / "labelsTr" / "brain_5.nii.gz");

  const auto broken = pipeline::verify_raw_dataset(root.string());
  const std::string text = problems_text(broken);
  auto expect = [&](const std::string& file, const std::string& words) {
    bool found = false;
    for (const auto& p : broken.problems) found |= p.file == (root / file).string() && p.problem.find(words) != std::string::npos;
    EXPECT_TRUE(found) << "expected '" << file << ": ..." << words << "...' in\n" << text;
  };
  expect("labelsTr/brain_0.nii.gz", "not on the grid");
  expect("labelsTr/brain_1.nii.gz", "label value(s) 7 not declared");
  expect("imagesTr/brain_2_0000.nii.gz", "truncated");
  expect("imagesTs/brain_8.nii.gz", "channel suffix");
  expect("labelsTr/brain_5.nii.gz", "without an image");
  const auto bad = iris::testing::run_program(iris::testing::program_path("iris-data"), "verify " + root.string(),
                                              (root.parent_path() / "bad.log").string());
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("brain_1.nii.gz: label value(s) 7"), std::string::npos) << bad.output;
}

// An empty label map is a problem, unless dataset.json declares the case a
// negative one ("iris_negative_cases", as iris-rsna prepare writes for series
// without an aneurysm).
TEST(IrisData, DeclaredNegativeCasesMayHaveEmptyLabelMaps) {
  REQUIRE_DATA(iris::testing::kMricronTemplates + "aal.nii.gz");
  const fs::path root = make_dataset(iris::testing::temp_folder("iris_data_negative") / "Dataset002_Brain");
  Image empty = io::read_labels((root / "labelsTr" / "brain_1.nii.gz").string());
  empty.voxels.zero_();
  io::write_image(empty, (root / "labelsTr" / "brain_1.nii.gz").string());
  const auto undeclared = pipeline::verify_raw_dataset(root.string());
  EXPECT_NE(problems_text(undeclared).find("brain_1.nii.gz: is empty (only background)"), std::string::npos)
      << problems_text(undeclared);
  std::ofstream(root / "dataset.json") << R"({"channel_names": {"0": "T1"},
 "labels": {"background": 0, "hippocampus": 1, "amygdala": 2},
 "numTraining": 3, "file_ending": ".nii.gz", "iris_negative_cases": ["brain_1"]})";
  const auto declared = pipeline::verify_raw_dataset(root.string());
  EXPECT_TRUE(declared.problems.empty()) << problems_text(declared);
}

TEST(IrisData, MissingPiecesOfTheLayoutAreNamed) {
  const fs::path root = iris::testing::temp_folder("iris_data_layout");
  auto none = pipeline::verify_raw_dataset((root / "absent").string());
  ASSERT_EQ(none.problems.size(), 1u);
  EXPECT_EQ(none.problems[0].problem, "folder not found");
  auto no_json = pipeline::verify_raw_dataset(root.string());
  ASSERT_FALSE(no_json.problems.empty());
  EXPECT_EQ(no_json.problems[0].file, (root / "dataset.json").string());
  std::ofstream(root / "dataset.json") << R"({"labels": {"liver": 1}, "numTraining": 2})";
  fs::create_directories(root / "imagesTr");
  const auto partial = pipeline::verify_raw_dataset(root.string());
  const std::string text = problems_text(partial);
  for (const char* words : {"no background", "channel_names", "file_ending", "labelsTr: folder missing",
                            "numTraining is 2 but imagesTr holds 0"})
    EXPECT_NE(text.find(words), std::string::npos) << words << " in\n" << text;
  const auto usage = iris::testing::run_program(iris::testing::program_path("iris-data"), "frobnicate x",
                                                (root / "usage.log").string());
  EXPECT_EQ(usage.exit_code, 2) << usage.output;
}
