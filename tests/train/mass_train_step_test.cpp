// One whole training step of iris against the author's code (Stanford-AIMI/MASS):
// tests/fixtures/mass_train_step was made by tools/make_mass_train_step.py, which
// runs MASS's model, BinaryDiceLoss + BinaryCrossEntropyLoss, clip_grad_norm_,
// Lamb and weight EMA on the tiny model of tests/fixtures/mass_tiny (see
// docs/fixtures.md). Here iris runs the same step with the functions its
// Trainer::step calls (training_step.h, optimizer.h, losses.h) and the settings
// of the shipped paper config, and every stage is compared: the loss terms, each
// parameter's gradient, the clipped norm, the Lamb update and the EMA update.
// Tensors are compared through digests (support/mass_train_step.h).
#include <gtest/gtest.h>

#include "support/mass_train_step.h"

using namespace iris;
using namespace iris_test;

TEST(MassTrainStep, ThePaperConfigTrainsWithTheAuthorsSettings) {
  const train::TrainConfig c = paper_config();
  const Json& h = fixture().meta.at("hyper_parameters");
  EXPECT_EQ(c.loss, model::RegionLoss::adaptive_tversky);
  EXPECT_EQ(c.optimizer, "lamb");
  EXPECT_DOUBLE_EQ(c.lr, h.at("lr").get<double>());
  EXPECT_DOUBLE_EQ(c.weight_decay, h.at("weight_decay").get<double>());
  EXPECT_DOUBLE_EQ(c.optimizer_eps, h.at("eps").get<double>());
  EXPECT_DOUBLE_EQ(c.grad_clip, h.at("grad_clip").get<double>());
  EXPECT_DOUBLE_EQ(c.weight_ema, h.at("ema_decay").get<double>());
  EXPECT_DOUBLE_EQ(c.dice_weight, h.at("dice_weight").get<double>());
  EXPECT_DOUBLE_EQ(c.bce_weight, h.at("bce_weight").get<double>());
  EXPECT_TRUE(c.param_groups.empty());  // one group: the author's Lamb decays every parameter
}

TEST(MassTrainStep, TheBatchReachesBothEndsOfTheAlphaClampAndHasAPaddingSlot) {
  // Otherwise the comparison below could not see a wrong clamp or padding weight.
  double lowest = 1, highest = 0;
  for (const auto& row : fixture().meta.at("alpha_unclamped"))
    for (const auto& a : row) lowest = std::min(lowest, a.get<double>()), highest = std::max(highest, a.get<double>());
  EXPECT_LT(lowest, 0.2);
  EXPECT_GT(highest, 0.8);
  bool padding = false;
  for (const auto& row : fixture().meta.at("tgt_idx"))
    for (const auto& i : row) padding = padding || i.get<long>() < 0;
  EXPECT_TRUE(padding);
}


// In float64 neither side rounds enough to hide or fake a difference: the
// loss, every gradient, the clipped norm, the Lamb step and the EMA step must
// agree to 1e-5 relative (in practice they agree to float32 storage, ~1e-7).
TEST(MassTrainStep, Float64StepEqualsTheAuthorsAtEveryStage) {
  const StepDigests& mass = fixture().runs.at("fp64");
  const StepDigests iris = iris_step(Precision::fp64, paper_config());
  const Distances d = distances(iris, mass);
  print("fp64", iris, mass, d);
  const double tol = 1e-5;
  EXPECT_LE(rel(iris.loss, mass.loss), tol);
  EXPECT_LE(rel(iris.dice, mass.dice), tol);
  EXPECT_LE(rel(iris.bce, mass.bce), tol);
  EXPECT_LE(relative(iris.logits, mass.logits), tol);
  EXPECT_LE(rel(iris.grad_norm, mass.grad_norm), tol);
  EXPECT_LE(d.grad.value, tol) << d.grad.name;
  EXPECT_LE(d.delta.value, tol) << d.delta.name;
  EXPECT_LE(d.ema_delta.value, tol) << d.ema_delta.name;
  EXPECT_LE(d.grad_noise.value, tol) << d.grad_noise.name;
}

// In float32 the two differ only by rounding (different kernels and summation
// orders): the loss to 1e-6, the logits and the norm to 1e-4; per parameter
// the median distance stays at rounding level and the worst (a gradient made
// of cancelling terms; a Lamb update where |m| / sqrt(v) meets eps) at 2 %.
TEST(MassTrainStep, Float32StepDiffersFromTheAuthorsOnlyByRounding) {
  const StepDigests& mass = fixture().runs.at("fp32");
  const StepDigests iris = iris_step(Precision::fp32, paper_config());
  const Distances d = distances(iris, mass);
  print("fp32", iris, mass, d);
  EXPECT_LE(rel(iris.loss, mass.loss), 1e-6);
  EXPECT_LE(rel(iris.dice, mass.dice), 1e-6);
  EXPECT_LE(rel(iris.bce, mass.bce), 1e-6);
  EXPECT_LE(relative(iris.logits, mass.logits), 1e-4);
  EXPECT_LE(rel(iris.grad_norm, mass.grad_norm), 1e-4);
  EXPECT_LE(median(d.grad_all), 1e-4);
  EXPECT_LE(median(d.delta_all), 1e-4);
  EXPECT_LE(d.grad.value, 2e-2) << d.grad.name;
  EXPECT_LE(d.delta.value, 2e-2) << d.delta.name;
  EXPECT_LE(d.ema_delta.value, 2e-2) << d.ema_delta.name;
}

// The author's bf16 step against its own float32 step sets the tolerance;
// iris's bf16 step is measured against the author's float32 step. The GPU
// check runs the same on CUDA (tests/device/device_test.cpp).
TEST(MassTrainStep, Bf16StepStaysAsCloseToFloat32AsTheAuthorsOwn) {
  expect_bf16_step_within_the_authors(iris_step(Precision::bf16, paper_config()), "cpu");
}
