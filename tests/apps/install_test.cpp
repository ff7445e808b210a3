// `make install` / `cmake --install` gives a tree that keeps working after it
// is moved: installed into one prefix, moved to another, its iris-infer
// segments the demo brain with the shipped model (found beside bin/, not in
// the source tree) and its iris-data converts a miniature MSD task with the
// shipped class vocabulary.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <ATen/ATen.h>

#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::shell_quoted;

namespace {
const std::string kKmeans = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
const std::string kTemplates = "/usr/share/mricron/templates/";
}  // namespace

TEST(Install, AMovedInstallSegmentsAndConvertsWithItsOwnData) {
  REQUIRE_DATA(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  REQUIRE_DATA(kTemplates + "ch2bet.nii.gz");
  const fs::path build = fs::path(iris::testing::program_path("iris-infer")).parent_path();
  const fs::path dir = iris::testing::temp_folder("install");
  auto r = iris::testing::run_program("cmake", "--install " + shell_quoted(build.string()) + " --prefix " +
                                                   shell_quoted((dir / "first").string()),
                                      (dir / "install.log").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  fs::rename(dir / "first", dir / "moved");
  const fs::path prefix = dir / "moved";
  ASSERT_TRUE(fs::exists(prefix / "share/iris/models/demo_brain.iris"));
  ASSERT_TRUE(fs::exists(prefix / "share/iris/configs/classes.yaml"));

  // The demo brain, one-shot from Colin27, with the installed model.
  const iris::io::Image bet = iris::io::read_image(kTemplates + "ch2bet.nii.gz");
  iris::io::Image mask;
  mask.geometry = bet.geometry;
  mask.voxels = bet.voxels.gt(0).to(at::kByte).contiguous();
  iris::io::write_image(mask, (dir / "colin_brain.nii.gz").string());
  r = iris::testing::run_program(
      shell_quoted((prefix / "bin/iris-infer").string()),
      "--model " + shell_quoted((prefix / "share/iris/models/demo_brain.iris").string()) + " --reference " + kTemplates +
          "ch2.nii.gz --reference-mask " + shell_quoted((dir / "colin_brain.nii.gz").string()) + " --query " + kKmeans +
          "KmeansTest_T1UCharRaw.nii.gz --output " + shell_quoted((dir / "brain.nii.gz").string()) +
          " --keep-largest --quiet",
      (dir / "infer.log").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const at::Tensor got = iris::io::read_labels((dir / "brain.nii.gz").string()).voxels.gt(0);
  const at::Tensor truth = iris::io::read_labels(kKmeans + "KmeansTest_T1RawSkullStrip.nii.gz").voxels.gt(0);
  const double dice = 2 * got.logical_and(truth).sum().item<double>() / (got.sum() + truth.sum()).item<double>();
  EXPECT_GE(dice, 0.90);

  // A miniature MSD task: "Anterior" becomes the vocabulary's canonical name.
  const fs::path task = dir / "Task04_Hippocampus";
  fs::create_directories(task / "imagesTr");
  fs::create_directories(task / "labelsTr");
  iris::io::Image image;
  image.geometry.size = {8, 8, 8};
  image.voxels = at::rand({8, 8, 8});
  iris::io::write_image(image, (task / "imagesTr/hippocampus_001.nii.gz").string());
  iris::io::Image labels = image;
  labels.voxels = (at::arange(512).reshape({8, 8, 8}) % 3).to(at::kByte);
  iris::io::write_image(labels, (task / "labelsTr/hippocampus_001.nii.gz").string());
  std::ofstream(task / "dataset.json")
      << R"({"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", )"
      << R"("2": "Posterior"}, "training": [{"image": "./imagesTr/hippocampus_001.nii.gz", )"
      << R"("label": "./labelsTr/hippocampus_001.nii.gz"}], "test": []})";
  r = iris::testing::run_program(shell_quoted((prefix / "bin/iris-data").string()),
                                 "convert msd " + shell_quoted(task.string()) + " " + shell_quoted((dir / "out").string()),
                                 (dir / "convert.log").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream json(dir / "out/dataset.json");
  const std::string text((std::istreambuf_iterator<char>(json)), {});
  EXPECT_NE(text.find("hippocampus_anterior"), std::string::npos) << text;
  EXPECT_NE(text.find("hippocampus_posterior"), std::string::npos) << text;
}
