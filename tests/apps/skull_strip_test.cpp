// Skull stripping by iris itself: the shipped demo model and its stored brain
// task (models/demo_brain.task, Colin27 + its brain mask) strip the KmeansTest
// subject (never seen in training) close to the subject's own skull-strip
// mask, through the library and through iris-preprocess --skull-strip.
#include <gtest/gtest.h>

#include <iostream>

#include <unistd.h>

#include <filesystem>

#include <ATen/ATen.h>

#include "../support/test_support.h"
#include "iris/common/error.h"
#include "iris/infer/segmenter.h"
#include "iris/infer/skull_strip.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

const std::string kKmeans = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
const std::string kTemplates = "/usr/share/mricron/templates/";
const std::string kModel = std::string(IRIS_TEST_DATA_DIR) + "/../models/demo_brain.iris";
const std::string kTask = std::string(IRIS_TEST_DATA_DIR) + "/../models/demo_brain.task";

double dice(const at::Tensor& a, const at::Tensor& b) {
  const double both = a.logical_and(b).sum().item<double>(), total = a.sum().item<double>() + b.sum().item<double>();
  return total > 0 ? 2 * both / total : 0.0;
}

}  // namespace

TEST(FillHoles, FillsEnclosedBackgroundOnly) {
  // A hollow cube (a closed shell) and a cup open to the volume's top face.
  at::Tensor m = at::zeros({12, 12, 24}, at::kByte);
  m.slice(0, 2, 9).slice(1, 2, 9).slice(2, 2, 9).fill_(1);
  m.slice(0, 4, 7).slice(1, 4, 7).slice(2, 4, 7).fill_(0);  // 27 enclosed voxels
  m.slice(0, 0, 10).slice(1, 2, 9).slice(2, 12, 19).fill_(1);
  m.slice(0, 0, 8).slice(1, 4, 7).slice(2, 14, 17).fill_(0);  // opens onto z = 0
  const at::Tensor f = iris::infer::fill_holes(m);
  EXPECT_EQ(f.scalar_type(), at::kByte);
  EXPECT_EQ(f.sum().item<long>() - m.sum().item<long>(), 27);
  EXPECT_TRUE(f.slice(0, 4, 7).slice(1, 4, 7).slice(2, 4, 7).eq(1).all().item<bool>());
  EXPECT_TRUE(f.slice(0, 0, 8).slice(1, 4, 7).slice(2, 14, 17).eq(0).all().item<bool>());
}

TEST(SkullStrip, StripsAnUnseenHeadWithTheShippedBrainTask) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kTask);
  REQUIRE_DATA(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  const iris::Image head = iris::io::read_image(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  const at::Tensor truth = iris::io::read_labels(kKmeans + "KmeansTest_T1RawSkullStrip.nii.gz").voxels.gt(0);
  const iris::infer::SkullStripResult r = iris::infer::skull_strip(head, kModel, kTask);
  const at::Tensor brain = r.mask.voxels.gt(0);
  ASSERT_EQ(brain.sizes(), truth.sizes());
  const double d = dice(brain, truth);
  std::cout << "skull strip Dice " << d << std::endl;
  EXPECT_GE(d, 0.92) << "measured 0.938";
  // Inside the brain the voxels are the input's, outside they are 0.
  EXPECT_EQ(r.image.voxels.scalar_type(), head.voxels.scalar_type());
  EXPECT_TRUE(at::equal(r.image.voxels.masked_select(brain), head.voxels.masked_select(brain)));
  EXPECT_TRUE(r.image.voxels.masked_select(brain.logical_not()).eq(0).all().item<bool>());
  EXPECT_TRUE(r.image.geometry.same_grid(head.geometry));

  // A task of two classes is refused, naming the task file.
  const fs::path dir = fs::temp_directory_path() / ("iris_skull_strip_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const iris::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  iris::Image two = aal;
  two.voxels = (aal.voxels.ge(91).logical_and(aal.voxels.le(116)).to(at::kByte) +
                aal.voxels.ge(77).logical_and(aal.voxels.le(78)).to(at::kByte) * 2).contiguous();
  iris::io::write_image(two, (dir / "two.nii.gz").string());
  iris::infer::TaskSpec spec;
  spec.references = {kTemplates + "ch2.nii.gz"};
  spec.reference_masks = {(dir / "two.nii.gz").string()};
  iris::infer::SegmenterOptions quiet;
  quiet.warn = [](const std::string&) {};
  iris::infer::Segmenter(kModel, spec, quiet).task().save((dir / "two.task").string());
  const std::string e = iris::testing::error_of([&] { iris::infer::skull_strip(head, kModel, (dir / "two.task").string()); });
  EXPECT_NE(e.find("two.task"), std::string::npos) << e;
  EXPECT_NE(e.find("one class"), std::string::npos) << e;

  // iris-preprocess --skull-strip: the same mask, and a stripped image next to it.
  const std::string program = iris::testing::program_path("iris-preprocess");
  const auto run = iris::testing::run_program(
      program,
      "--input " + kKmeans + "KmeansTest_T1UCharRaw.nii.gz --skull-strip " + kModel + " --skull-strip-task " + kTask +
          " --brain-mask-output " + (dir / "mask.nii.gz").string() + " --set spacing=none --set crop_foreground=false" +
          " --set reorient=false --set intensity=none --output " + (dir / "stripped.nii.gz").string(),
      (dir / "preprocess.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(at::equal(iris::io::read_labels((dir / "mask.nii.gz").string()).voxels.gt(0), brain));
  const at::Tensor stripped = iris::io::read_image((dir / "stripped.nii.gz").string()).voxels;
  EXPECT_TRUE(stripped.masked_select(brain.logical_not()).eq(0).all().item<bool>());
  // --skull-strip-task alone is a usage error.
  EXPECT_NE(iris::testing::run_program(program, "--input x.nii.gz --output y.nii.gz --skull-strip-task " + kTask,
                                       (dir / "usage.log").string()).exit_code, 0);
  fs::remove_all(dir);
}
