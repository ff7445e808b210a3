// The shipped demo model on real data, through iris-infer as `make demo`
// runs it: one-shot brain segmentation of the KmeansTest subject (never seen
// in training) from Colin27 + its brain mask must reach the 0.90 Dice the
// demo promises, and the reference must steer the result (a cerebellum
// reference gives the cerebellum, not the brain). The thalamus of MNI152 from
// Colin27's, one-shot and with in-context tuning, as docs/demo.md reports.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <iostream>

#include <ATen/ATen.h>

#include "../support/test_support.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

const std::string kKmeans = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
const std::string kTemplates = "/usr/share/mricron/templates/";
const std::string kModel = std::string(IRIS_TEST_DATA_DIR) + "/../models/demo_brain.iris";
// nilearn's ICBM152 2009c template (1 mm), as tools/make_test_fixtures.py copies it.
const std::string kMni152 = iris::testing::kFixtures + "mni152_2009.nii.gz";

double dice(const at::Tensor& a, const at::Tensor& b) {
  const double both = a.logical_and(b).sum().item<double>(), total = a.sum().item<double>() + b.sum().item<double>();
  return total > 0 ? 2 * both / total : 0.0;
}

// Writes `mask` (bool [Z, Y, X]) on `like`'s grid as a uint8 label map.
void write_mask(const iris::io::Image& like, const at::Tensor& mask, const fs::path& path) {
  iris::io::Image labels;
  labels.geometry = like.geometry;
  labels.voxels = mask.to(at::kByte).contiguous();
  iris::io::write_image(labels, path.string());
}

// One-pass Dice of the four structures (test below), under what the shipped
// stage-6 model measures on this MNI152 file (ICBM 2009c, the demo's query
// too): 0.687 / 0.716 / 0.739 / 0.754 (2026-12-07); stage 5 0.653 / 0.692 /
// 0.705 / 0.717 (2026-12-06, both builds). On the former npm
// MNI152 with its letters it measured 0.670 / 0.562 / 0.522 / 0.622 (stage 4:
// 0.696 / 0.540 / 0.434 / 0.616; stage 2: thalamus and caudate 0).
const double kOnePassAtLeast[4] = {0.62, 0.66, 0.67, 0.69};

}  // namespace

TEST(DemoModel, SegmentsAnUnseenBrainFromOneReferenceAndFollowsTheReference) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kKmeans + "KmeansTest_T1UCharRaw.nii.gz");
  REQUIRE_DATA(kTemplates + "ch2.nii.gz");
  const std::string infer = iris::testing::program_path("iris-infer");
  ASSERT_TRUE(fs::exists(infer)) << infer << " not built";
  const fs::path dir = fs::temp_directory_path() / ("iris_demo_model_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  const iris::io::Image colin_bet = iris::io::read_image(kTemplates + "ch2bet.nii.gz");
  write_mask(colin_bet, colin_bet.voxels.gt(0), dir / "colin_brain.nii.gz");
  const iris::io::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  write_mask(aal, aal.voxels.ge(91).logical_and(aal.voxels.le(116)), dir / "colin_cerebellum.nii.gz");

  auto segment = [&](const std::string& mask, const std::string& output, const std::string& extra = "") {
    const auto run = iris::testing::run_program(
        infer,
        "--model " + kModel + " --reference " + kTemplates + "ch2.nii.gz --reference-mask " + (dir / mask).string() +
            " --query " + kKmeans + "KmeansTest_T1UCharRaw.nii.gz --output " + (dir / output).string() +
            " --keep-largest --quiet" + extra,
        (dir / (output + ".log")).string());
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return iris::io::read_labels((dir / output).string()).voxels.gt(0);
  };
  const at::Tensor truth = iris::io::read_labels(kKmeans + "KmeansTest_T1RawSkullStrip.nii.gz").voxels.gt(0);
  const at::Tensor brain = segment("colin_brain.nii.gz", "brain.nii.gz");
  ASSERT_EQ(brain.sizes(), truth.sizes());
  const double plain = dice(brain, truth);
  EXPECT_GE(plain, 0.90);  // measured 0.933 (stage 6; stage 5 0.935, stage 4 0.938)
  // With its left-right mirror image (--tta): no worse than 0.02 (issue 36).
  const double with_tta = dice(segment("colin_brain.nii.gz", "brain_tta.nii.gz", " --tta"), truth);
  std::cout << "KmeansTest brain: Dice " << plain << ", with --tta " << with_tta << std::endl;
  EXPECT_GE(with_tta, plain - 0.02);

  // A cerebellum reference gives a part of the brain, not the brain: measured
  // 12,136 voxels against 130,728 (9%), Dice 0.136 with the whole brain.
  const at::Tensor cerebellum = segment("colin_cerebellum.nii.gz", "cerebellum.nii.gz");
  const double n_cerebellum = cerebellum.sum().item<double>(), n_brain = brain.sum().item<double>();
  EXPECT_GT(n_cerebellum, 0.02 * n_brain);
  EXPECT_LT(n_cerebellum, 0.3 * n_brain);
  EXPECT_LT(dice(cerebellum, truth), 0.4);
  fs::remove_all(dir);
}

TEST(DemoModel, ReadsTheThalamusFromOneReferenceOneShotAndTuned) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kMni152);
  REQUIRE_DATA(kTemplates + "aal.nii.gz");
  const std::string infer = iris::testing::program_path("iris-infer"), labels = iris::testing::program_path("iris-labels");
  ASSERT_TRUE(fs::exists(infer)) << infer << " not built";
  const fs::path dir = fs::temp_directory_path() / ("iris_demo_tuning_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  // AAL thalamus (77-78) on Colin27; the same MNI-space mask carried onto the
  // MNI152 average's grid is the (atlas-based) truth, as in the demo.
  const iris::io::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  write_mask(aal, aal.voxels.ge(77).logical_and(aal.voxels.le(78)), dir / "colin_thalamus.nii.gz");
  auto run = iris::testing::run_program(labels,
                                        "resample --input " + (dir / "colin_thalamus.nii.gz").string() + " --like " +
                                            kMni152 + " --output " + (dir / "mni_thalamus.nii.gz").string(),
                                        (dir / "resample.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const at::Tensor truth = iris::io::read_labels((dir / "mni_thalamus.nii.gz").string()).voxels.gt(0);

  auto segment = [&](const std::string& extra, const std::string& output) {
    const auto r = iris::testing::run_program(
        infer,
        "--model " + kModel + " --reference " + kTemplates + "ch2.nii.gz --reference-mask " +
            (dir / "colin_thalamus.nii.gz").string() + " --query " + kMni152 + " --output " + (dir / output).string() +
            " --quiet" + extra,
        (dir / (output + ".log")).string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return iris::io::read_labels((dir / output).string()).voxels.gt(0);
  };
  // The shipped model (stage 6, docs/demo.md) reads the thalamus from the
  // reference: measured 0.724 one-shot and 0.735 tuned (100 Adam steps at
  // 0.1, the defaults) on ICBM 2009c (stage 5 0.709 / 0.713); on the former npm MNI152 0.587 / 0.586
  // (stage 4 0.622 / 0.625, stage 2 0.576 / 0.590, the first model 0.398, a
  // blob over all three deep structures, / 0.539).
  const double one_shot = dice(segment("", "one_shot.nii.gz"), truth);
  const double tuned = dice(segment(" --strategy tuning", "tuned.nii.gz"), truth);
  std::cout << "thalamus: one-shot Dice " << one_shot << ", tuned " << tuned << std::endl;
  EXPECT_GE(one_shot, 0.68);
  EXPECT_GE(tuned, 0.68);
  fs::remove_all(dir);
}

// Issue 17's target: the four structures from Colin27's AAL labels to the
// MNI152 average (nilearn's ICBM152 2009c template), one-shot,
// all four in one pass, where their tokens attend to each other: each must be
// found on its own, not as one shared deep-grey-matter blob.
TEST(DemoModel, ReadsFourStructuresInOnePass) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kMni152);
  REQUIRE_DATA(kTemplates + "aal.nii.gz");
  const std::string infer = iris::testing::program_path("iris-infer"), labels = iris::testing::program_path("iris-labels");
  ASSERT_TRUE(fs::exists(infer)) << infer << " not built";
  const fs::path dir = fs::temp_directory_path() / ("iris_demo_one_pass_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const iris::io::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  const at::Tensor& v = aal.voxels;
  // cerebellum + vermis 91-116, thalamus 77-78, putamen 73-74, caudate 71-72
  at::Tensor four = at::zeros(v.sizes(), at::kByte);
  four.masked_fill_(v.ge(91).logical_and(v.le(116)), 1);
  four.masked_fill_(v.ge(77).logical_and(v.le(78)), 2);
  four.masked_fill_(v.ge(73).logical_and(v.le(74)), 3);
  four.masked_fill_(v.ge(71).logical_and(v.le(72)), 4);
  iris::io::Image structures;
  structures.geometry = aal.geometry;
  structures.voxels = four;
  iris::io::write_image(structures, (dir / "colin_structures.nii.gz").string());
  auto run = iris::testing::run_program(labels,
                                        "resample --input " + (dir / "colin_structures.nii.gz").string() + " --like " +
                                            kMni152 + " --output " + (dir / "mni_structures.nii.gz").string(),
                                        (dir / "resample.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const at::Tensor truth = iris::io::read_labels((dir / "mni_structures.nii.gz").string()).voxels;
  run = iris::testing::run_program(infer,
                                   "--model " + kModel + " --reference " + kTemplates + "ch2.nii.gz --reference-mask " +
                                       (dir / "colin_structures.nii.gz").string() + " --query " + kMni152 +
                                       " --output " + (dir / "one_pass.nii.gz").string() + " --quiet",
                                   (dir / "infer.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const at::Tensor got = iris::io::read_labels((dir / "one_pass.nii.gz").string()).voxels;
  ASSERT_EQ(got.sizes(), truth.sizes());
  const char* names[] = {"cerebellum", "thalamus", "putamen", "caudate"};
  // The shipped model learnt left-right mirror invariance (train.augment_mirror
  // [x], configs/train/demo_brain_mirror.yaml): --tta averages the query with
  // its mirror image and may cost no structure more than 0.02 (issue 36; all
  // eight flips of a model that never saw mirroring once gave 0.000 / 0.155 /
  // 0.000 / 0.000).
  run = iris::testing::run_program(infer,
                                   "--model " + kModel + " --reference " + kTemplates + "ch2.nii.gz --reference-mask " +
                                       (dir / "colin_structures.nii.gz").string() + " --query " + kMni152 +
                                       " --output " + (dir / "tta.nii.gz").string() + " --tta --quiet",
                                   (dir / "tta.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const at::Tensor tta = iris::io::read_labels((dir / "tta.nii.gz").string()).voxels;
  ASSERT_EQ(tta.sizes(), truth.sizes());
  EXPECT_FALSE(tta.equal(got)) << "--tta changed nothing";
  for (int k = 1; k <= 4; ++k) {
    const double d = dice(got.eq(k), truth.eq(k)), with_tta = dice(tta.eq(k), truth.eq(k));
    std::cout << names[k - 1] << " in one pass: Dice " << d << ", with --tta " << with_tta << std::endl;
    EXPECT_GE(d, kOnePassAtLeast[k - 1]) << names[k - 1];
    EXPECT_GE(with_tta, d - 0.02) << names[k - 1] << " with --tta";
  }
  fs::remove_all(dir);
}
