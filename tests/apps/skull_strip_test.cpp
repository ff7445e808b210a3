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
#include "iris/common/tensor_file.h"
#include "iris/infer/segmenter.h"
#include "iris/infer/skull_strip.h"
#include "iris/io/image_io.h"
#include "iris/model/model_file.h"

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
  EXPECT_GE(d, 0.92) << "measured 0.933 (stage 6; stage 5 0.935, stage 4 0.938)";
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
  // A model without preprocessing is refused with advice iris-preprocess
  // can follow (it has no --preprocess to run the model raw).
  iris::model::IrisModel bare = iris::model::load_model(kModel);
  bare.preprocess.clear();
  iris::model::save_model(bare, (dir / "bare.iris").string());
  const auto refused = iris::testing::run_program(
      program, "--input " + kKmeans + "KmeansTest_T1UCharRaw.nii.gz --skull-strip " + (dir / "bare.iris").string() +
                   " --skull-strip-task " + kTask + " --output " + (dir / "bare_out.nii.gz").string(),
      (dir / "bare.log").string());
  EXPECT_EQ(refused.exit_code, 3) << refused.output;
  EXPECT_NE(refused.output.find("bare.iris: stores no preprocessing"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("import it again with its preprocessing"), std::string::npos) << refused.output;
  EXPECT_EQ(refused.output.find("preprocess none"), std::string::npos) << refused.output;
  EXPECT_FALSE(fs::exists(dir / "bare_out.nii.gz"));
  // --skull-strip-task alone is a usage error.
  EXPECT_NE(iris::testing::run_program(program, "--input x.nii.gz --output y.nii.gz --skull-strip-task " + kTask,
                                       (dir / "usage.log").string()).exit_code, 0);
  fs::remove_all(dir);
}

// Skull stripping as a step stored in the model file (iris-import
// --skull-strip-task): iris-infer's pipeline strips every query and every
// reference with the stored brain task before the model's preprocessing,
// which gives what stripping both first (infer::skull_strip) and segmenting
// them with the plain model gives.
TEST(SkullStrip, AStepStoredInTheModelFileStripsQueriesAndReferencesFirst) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kTask);
  REQUIRE_DATA(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  REQUIRE_DATA(kTemplates + "ch2.nii.gz");
  REQUIRE_DATA(kTemplates + "aal.nii.gz");
  const fs::path dir = iris::testing::temp_folder("model_skull_strip");  // removed at exit
  const std::string stripping = (dir / "stripping.iris").string();
  const std::string import = iris::testing::program_path("iris-import");
  auto attached = iris::testing::run_program(
      import, kModel + " --skull-strip-task " + kTask + " --output " + stripping, (dir / "import.log").string());
  ASSERT_EQ(attached.exit_code, 0) << attached.output;

  // Stored as the task file holds it, and the weights' fingerprint is unchanged.
  const iris::model::IrisModel plain = iris::model::load_model(kModel);
  const iris::model::IrisModel m = iris::model::load_model(stripping);
  const iris::model::TaskEmbedding brain_task = iris::model::TaskEmbedding::load(kTask);
  ASSERT_TRUE(m.skull_strip.has_value());
  EXPECT_FALSE(plain.skull_strip.has_value());
  EXPECT_EQ(m.fingerprint, plain.fingerprint);
  ASSERT_EQ(m.skull_strip->stages.size(), brain_task.stages.size());
  for (size_t i = 0; i < brain_task.stages.size(); ++i)
    EXPECT_TRUE(at::equal(m.skull_strip->stages[i], brain_task.stages[i])) << "stage " << i;

  // The reference: Colin27 with its cerebellum (AAL 91-116); the query: the KmeansTest head.
  const iris::Image head = iris::io::read_image(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  const iris::Image colin = iris::io::read_image(kTemplates + "ch2.nii.gz");
  const iris::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  iris::Image cerebellum = aal;
  cerebellum.voxels = aal.voxels.ge(91).logical_and(aal.voxels.le(116)).to(at::kByte).contiguous();
  iris::io::write_image(cerebellum, (dir / "cerebellum.nii.gz").string());
  iris::infer::SegmenterOptions quiet;
  quiet.warn = [](const std::string&) {};
  iris::infer::TaskSpec spec;
  spec.references = {kTemplates + "ch2.nii.gz"};
  spec.reference_masks = {(dir / "cerebellum.nii.gz").string()};
  iris::infer::Segmenter with_step(stripping, spec, quiet);
  const iris::infer::Segmentation a = with_step.segment(head);
  EXPECT_EQ(with_step.report()["skull_strip"], true);

  // Stripped first, by infer::skull_strip, then the plain model.
  const iris::infer::SkullStripResult head_stripped = iris::infer::skull_strip(head, kModel, kTask);
  iris::io::write_image(iris::infer::skull_strip(colin, kModel, kTask).image, (dir / "colin_stripped.nii.gz").string());
  iris::infer::TaskSpec stripped_spec = spec;
  stripped_spec.references = {(dir / "colin_stripped.nii.gz").string()};
  iris::infer::Segmenter plain_model(kModel, stripped_spec, quiet);
  const iris::infer::Segmentation b = plain_model.segment(head_stripped.image);
  EXPECT_EQ(plain_model.report()["skull_strip"], false);
  ASSERT_EQ(a.labels.voxels.sizes(), b.labels.voxels.sizes());
  const long differ = a.labels.voxels.ne(b.labels.voxels).sum().item<long>();
  const long found = a.labels.voxels.gt(0).sum().item<long>();
  std::cout << "cerebellum voxels " << found << ", differing from strip-first-then-segment " << differ << std::endl;
  EXPECT_GT(found, 1000);
  EXPECT_EQ(differ, 0);
  EXPECT_TRUE(a.labels.voxels.masked_select(head_stripped.mask.voxels.eq(0)).eq(0).all().item<bool>());

  // --no-skull-strip (SegmenterOptions::skull_strip = false) is the plain model on the head.
  iris::infer::SegmenterOptions off = quiet;
  off.skull_strip = false;
  iris::infer::Segmenter without_step(stripping, spec, off);
  iris::infer::Segmenter plain_on_head(kModel, spec, quiet);
  EXPECT_EQ(without_step.report()["skull_strip"], false);
  EXPECT_TRUE(at::equal(without_step.segment(head).labels.voxels, plain_on_head.segment(head).labels.voxels));

  // iris-preprocess --skull-strip takes the model's own task when none is given.
  const auto pre = iris::testing::run_program(
      iris::testing::program_path("iris-preprocess"),
      "--input " + kKmeans + "KmeansTest_T1UCharRaw.nii.gz --skull-strip " + stripping + " --brain-mask-output " +
          (dir / "mask.nii.gz").string() + " --set spacing=none --set crop_foreground=false --set reorient=false" +
          " --set intensity=none --output " + (dir / "stripped.nii.gz").string(),
      (dir / "preprocess.log").string());
  ASSERT_EQ(pre.exit_code, 0) << pre.output;
  EXPECT_TRUE(at::equal(iris::io::read_labels((dir / "mask.nii.gz").string()).voxels.gt(0),
                        head_stripped.mask.voxels.gt(0)));
  const std::string no_task = iris::testing::error_of([&] { iris::infer::skull_strip(head, kModel, ""); });
  EXPECT_NE(no_task.find("demo_brain.iris"), std::string::npos) << no_task;
  EXPECT_NE(no_task.find("stores no skull-strip task"), std::string::npos) << no_task;

  // Refused, naming the task file: a task of another model, a task of two classes.
  iris::model::TaskEmbedding other = brain_task;
  other.model_fingerprint = "0123456789abcdef";
  other.save((dir / "other.task").string());
  auto refused = iris::testing::run_program(import, kModel + " --skull-strip-task " + (dir / "other.task").string() +
                                                        " --output " + (dir / "x.iris").string(),
                                            (dir / "other.log").string());
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("other.task"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("another model"), std::string::npos) << refused.output;
  iris::model::TaskEmbedding two = iris::model::TaskEmbedding::concat({brain_task, brain_task});
  two.labels = {1, 2};
  two.names = {"a", "b"};
  two.save((dir / "two.task").string());
  refused = iris::testing::run_program(import, kModel + " --skull-strip-task " + (dir / "two.task").string() +
                                                   " --output " + (dir / "x.iris").string(),
                                       (dir / "two.log").string());
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("two.task"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("one class"), std::string::npos) << refused.output;
  EXPECT_FALSE(fs::exists(dir / "x.iris"));

  // A model file whose skull-strip task lost a stage is damage, naming the file.
  const iris::TensorFile file = iris::TensorFile::load(stripping, "", "model");
  iris::TensorFile cut(file.format());
  for (const auto& [k, v] : file.metadata())
    if (k != "format" && k != "iris.checksum") cut.set(k, v);
  for (const auto& [name, t] : file.tensors())
    if (name != "skull_strip/stage1") cut.put(name, t);
  cut.save((dir / "cut.iris").string());
  const std::string damaged = iris::testing::error_of([&] { iris::model::load_model((dir / "cut.iris").string()); });
  EXPECT_NE(damaged.find("cut.iris"), std::string::npos) << damaged;
  EXPECT_NE(damaged.find("skull_strip/stage1"), std::string::npos) << damaged;

  // --skull-strip-task none removes the step.
  ASSERT_EQ(iris::testing::run_program(import, stripping + " --skull-strip-task none --output " +
                                                   (dir / "removed.iris").string(),
                                       (dir / "removed.log").string())
                .exit_code,
            0);
  EXPECT_FALSE(iris::model::load_model((dir / "removed.iris").string()).skull_strip.has_value());
}
