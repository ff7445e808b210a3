// The computations that run on an accelerator, run on $IRIS_TEST_DEVICE
// (default cuda; scripts/gpu_check.sh runs them on a GPU): the author's model
// reproduced in float32 and in bf16 autocast, sliding-window inference equal
// to the CPU's, training steps over NCCL, and a checkpoint round trip that
// resumes to the same losses. Without a CUDA device they are skipped, with
// the reason, and ctest counts them as skipped (never as passed): the CPU
// compared with itself would prove nothing. IRIS_TEST_DEVICE=cpu runs them on
// the CPU by hand.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "iris/common/compat.h"
#include "iris/data/episodes.h"
#include "iris/infer/sliding_window.h"
#include "iris/model/checkpoint_import.h"
#include "support/float_file.h"
#include "iris/model/task_embedding.h"
#include "iris/train/communicator.h"
#include "iris/train/trainer.h"
#include "support/mass_train_step.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace iris;

namespace {

const std::string kFixtures = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/mass_tiny/";

c10::Device test_device() {
  const char* d = std::getenv("IRIS_TEST_DEVICE");
  c10::Device device(d && *d ? d : "cuda");
  // As iris's programs resolve it (common/device.h): a GPU with its index.
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, 0);
  return device;
}

// Why the device cannot run here ("" when it can).
std::string unavailable(const c10::Device& device) {
  if (!device.is_cuda()) return "";
#ifndef IRIS_HAVE_CUDA
  return "this LibTorch has no CUDA";
#else
  if (!torch::cuda::is_available()) return "no CUDA device (torch::cuda::is_available() is false)";
  return "";
#endif
}

#define IRIS_REQUIRE_DEVICE(device)                                                                   \
  do {                                                                                              \
    const std::string why = unavailable(device);                                                    \
    if (!why.empty()) GTEST_SKIP() << "needs " << (device).str() << ": " << why                     \
                                   << "; scripts/gpu_check.sh runs it on a GPU node";               \
  } while (0)

at::Tensor load_bin(const std::string& name, std::vector<int64_t> shape) {
  return iris_test::read_float32_file(kFixtures + name, std::move(shape));
}

std::vector<data::LoadedDataset> synthetic_datasets() {
  data::LoadedDataset d;
  d.name = "synthetic";
  for (int s = 0; s < 3; ++s) {
    const long n = 40;
    auto r = torch::arange(n, torch::kFloat);
    auto z = r.view({n, 1, 1}), y = r.view({1, n, 1}), x = r.view({1, 1, n});
    auto d2 = ((x - 19 - s) / 10).pow(2) + ((y - 20 + s) / 8).pow(2) + ((z - 18 - 2 * s) / 9).pow(2);
    auto labels = (d2 <= 1).to(torch::kLong) + (d2 <= 0.3).to(torch::kLong);
    torch::manual_seed(s);
    data::CaseVolume v;
    v.name = "case" + std::to_string(s);
    v.image = labels.to(torch::kFloat) * 0.8 + 0.2 * torch::randn({n, n, n});
    v.labels = labels;
    v.classes = {1, 2};
    d.cases.push_back(v);
  }
  d.class_ids = {{1, 0}, {2, 1}};
  return {d};
}

train::TrainConfig train_config(const fs::path& out, const c10::Device& device) {
  train::TrainConfig c;
  c.iterations = 4;
  c.batch = 2;
  c.episodes.patch = 32;
  c.episodes.max_classes = 2;
  c.lr = 1e-3;
  c.warmup = 1;
  c.checkpoint_every = 0;
  c.validate_every = 0;
  c.log_every = 1;
  c.tensorboard = false;
  c.output_dir = out.string();
  c.seed = 5;
  c.device = device.str();
  return c;
}

model::ModelConfig tiny_model() {
  auto m = model::preset("tiny");
  m.memory_bank_size = 4;
  return m;
}

}  // namespace

TEST(OnDevice, AuthorsModelInFloat32AndBf16) {
  const c10::Device device = test_device();
  IRIS_REQUIRE_DEVICE(device);
  torch::NoGradGuard g;
  auto model = model::import_mass_checkpoint(kFixtures + "model.pt", std::nullopt);
  model.net->to(device);
  model.net->eval();
  auto query = load_bin("query_image.bin", {1, 1, 32, 32, 32}).to(device);
  auto reference = load_bin("reference_image.bin", {1, 1, 32, 32, 32}).to(device);
  auto masks = load_bin("reference_masks.bin", {1, 2, 32, 32, 32}).to(device);
  const auto expected = load_bin("logits.bin", {1, 2, 32, 32, 32});
  const at::Tensor fp32 = model.net->forward(query, reference, masks).cpu();
  const float diff = (fp32 - expected).abs().max().item<float>();
  std::printf("%s float32: max |logits - MASS logits| = %.3g\n", device.str().c_str(), diff);
  // cuDNN/cuBLAS choose other summation orders than the CPU (TF32 is off by default in LibTorch).
  EXPECT_LE(diff, device.is_cuda() ? 2e-3 : 1e-4);
  at::Tensor bf16;
  {
    compat::AutocastGuard autocast(device.type(), at::kBFloat16, true);
    bf16 = model.net->forward(query, reference, masks).to(at::kFloat).cpu();
  }
  // bf16 keeps 8 bits of mantissa: logits move by a few percent of their
  // range, and only those near 0 may change sign.
  const float scale = expected.abs().max().item<float>();
  const double mean_error = (bf16 - expected).abs().mean().item<double>() / scale;
  const at::Tensor confident = expected.abs() > 0.1 * scale;
  const double agree = ((bf16 > 0) == (expected > 0)).masked_select(confident).to(at::kDouble).mean().item<double>();
  std::printf("%s bf16: mean |logits - MASS logits| = %.3g of the range %.3g, sign agreement where |logit| > 10%%: %.4f\n",
              device.str().c_str(), mean_error, scale, agree);
  EXPECT_LE(mean_error, 0.03);
  EXPECT_GE(agree, 0.99);
}

// The whole training step with bf16 autocast (forward, adaptive Tversky + BCE,
// backward, clipping, Lamb, EMA) on the device, against the author's float32
// step: within the author's own bf16 distance from it (tests/train/mass_train_step_test.cpp
// runs the same on the CPU).
TEST(OnDevice, Bf16TrainingStepWithinTheAuthorsOwnBf16Distance) {
  const c10::Device device = test_device();
  IRIS_REQUIRE_DEVICE(device);
  iris_test::expect_bf16_step_within_the_authors(
      iris_test::iris_step(iris_test::Precision::bf16, iris_test::paper_config(), device), device.str().c_str());
}

TEST(OnDevice, SlidingWindowEqualsTheCpu) {
  const c10::Device device = test_device();
  IRIS_REQUIRE_DEVICE(device);
  torch::NoGradGuard g;
  torch::manual_seed(3);
  model::IrisNet net(tiny_model());
  net->eval();
  const at::Tensor reference = torch::randn({1, 1, 32, 32, 32});
  const at::Tensor masks = (torch::rand({1, 2, 32, 32, 32}) > 0.6).to(at::kFloat);
  const auto task = model::encode_task(*net, reference, masks);
  const at::Tensor volume = torch::randn({40, 56, 48});
  infer::SlidingWindowOptions o;
  o.window = 32;
  o.overlap = 0.5;
  o.batch = 2;
  const at::Tensor on_cpu = infer::sliding_window_probabilities(*net, volume, task, o);
  net->to(device);
  o.device = device;
  // Blended on the device (automatic: the sums fit), then in host memory:
  // both give the CPU's probabilities, on the host.
  for (const auto stitching : {infer::Stitching::automatic, infer::Stitching::host}) {
    o.stitching = stitching;
    EXPECT_EQ(infer::stitch_on_device(o, task.num_classes(), volume.numel()),
              device.is_cuda() && stitching == infer::Stitching::automatic);
    const at::Tensor on_device = infer::sliding_window_probabilities(*net, volume, task.to(device), o);
    EXPECT_EQ(on_device.device().type(), c10::kCPU);
    ASSERT_EQ(on_device.sizes(), on_cpu.sizes());
    EXPECT_LE((on_device - on_cpu).abs().max().item<float>(), device.is_cuda() ? 1e-3 : 0.0);
  }
}

TEST(OnDevice, TrainingStepsAndACheckpointRoundTrip) {
  const c10::Device device = test_device();
  IRIS_REQUIRE_DEVICE(device);
  const fs::path dir = iris::testing::temp_folder("device_train");
  // One process with the backend named, so its collectives run even at world
  // size 1: NCCL on a GPU (CUDA tensors only), Gloo on the CPU.
  train::CommunicatorOptions o{device.is_cuda() ? "nccl" : "gloo"};
  o.device = device;
  auto comm = train::make_communicator({}, o);
  auto make = [&](const fs::path& out) {
    auto c = train_config(out, device);
    return std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                            data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                                            std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
  };
  auto whole = make(dir / "whole");
  ASSERT_EQ(whole->run(false), train::TrainOutcome::kFinished);
  for (const auto& m : whole->history()) EXPECT_TRUE(std::isfinite(m.loss));
  for (const auto& p : whole->net()->parameters()) EXPECT_EQ(p.device(), device);
  auto first = make(dir / "cut");
  first->stop_after(2);
  ASSERT_EQ(first->run(false), train::TrainOutcome::kPreempted);
  auto second = make(dir / "cut");
  ASSERT_EQ(second->run(train::ResumeMode::kLast), train::TrainOutcome::kFinished);
  ASSERT_EQ(second->history().size(), 2u);
  for (int i = 0; i < 2; ++i) {
    // Exact on the CPU; GPU kernels may sum in another order from run to run.
    if (device.is_cuda()) EXPECT_NEAR(second->history()[i].loss, whole->history()[i + 2].loss, 1e-4);
    else EXPECT_EQ(second->history()[i].loss, whole->history()[i + 2].loss);
  }
  fs::remove_all(dir);
}
