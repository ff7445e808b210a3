// The sliding window against its definition, computed here window by window:
// every voxel's probability is the importance-weighted mean of the
// probabilities of the windows that cover it. Window positions are written
// out by hand from nnU-Net's rule (n = ceil((size - w) / step) + 1 windows
// spread evenly so that the last ends at the border).
#include <gtest/gtest.h>

#include <cmath>

#include <torch/torch.h>

#include "support/inference_helpers.h"
#include "iris/infer/reference.h"
#include "iris/infer/sliding_window.h"
#include "iris/model/task_embedding.h"

using namespace iris;
using namespace iris_test;
using torch::indexing::Slice;

namespace {

struct Window : ::testing::Test {
  void SetUp() override {
    net = tiny_net();
    auto [reference, labels] = ball_and_box(24, 40, 36, 1);
    task = infer::encode_reference(*net, reference, labels, {1, 2}, "zscore", c10::kCPU, "fp");
    auto [q, unused] = ball_and_box(40, 33, 50, 2);
    volume = data_volume(q);
  }
  // One window through the model, on its own (batch of one).
  at::Tensor window_probabilities(const at::Tensor& v, long z, long y, long x, long w) {
    torch::NoGradGuard no_grad;
    const at::Tensor crop = v.index({Slice(z, z + w), Slice(y, y + w), Slice(x, x + w)});
    return model::segment(*net, crop.unsqueeze(0).unsqueeze(0).contiguous(), task).sigmoid()[0];
  }
  model::IrisNet net{nullptr};
  model::TaskEmbedding task;
  at::Tensor volume;
};

}  // namespace

TEST_F(Window, UniformWeightsGiveTheMeanOfTheCoveringWindows) {
  // 40 x 33 x 50 voxels, window 32, overlap 0.5 (step 16):
  //   z: ceil(8/16)+1 = 2 windows at 0, 8;  y: 2 at 0, 1;  x: ceil(18/16)+1 = 3 at 0, 9, 18.
  const std::vector<long> zs{0, 8}, ys{0, 1}, xs{0, 9, 18};
  const long K = task.num_classes();
  at::Tensor sum = at::zeros({K, 40, 33, 50}), count = at::zeros({40, 33, 50});
  for (long z : zs)
    for (long y : ys)
      for (long x : xs) {
        sum.index({Slice(), Slice(z, z + 32), Slice(y, y + 32), Slice(x, x + 32)}) +=
            window_probabilities(volume, z, y, x, 32);
        count.index({Slice(z, z + 32), Slice(y, y + 32), Slice(x, x + 32)}) += 1;
      }
  ASSERT_EQ(count.min().item<float>(), 1.0f);  // every voxel covered
  const at::Tensor expected = sum / count;
  infer::SlidingWindowOptions o;
  o.window = 32;
  o.overlap = 0.5;
  o.gaussian = false;
  for (long batch : {1L, 5L}) {  // the batch of windows changes nothing
    o.batch = batch;
    const at::Tensor got = infer::sliding_window_probabilities(*net, volume, task, o);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT((got - expected).abs().max().item<float>(), 2e-6) << "batch " << batch;
  }
}

TEST_F(Window, GaussianWeightsFollowTheirFormula) {
  // Importance w(p) = exp(-|p - c|^2 / (2 s^2)), s = 32 / 8, c = 15.5 per
  // axis, floored at 1e-3; the result is sum(w * prob) / sum(w).
  auto axis = [](long n) {
    const at::Tensor r = at::arange(n, at::kDouble);
    return at::exp(-(r - (n - 1) / 2.0).pow(2) / (2 * std::pow(n / 8.0, 2)));
  };
  at::Tensor g = axis(32).view({-1, 1, 1}) * axis(32).view({1, -1, 1}) * axis(32).view({1, 1, -1});
  g = (g / g.max()).clamp_min(1e-3).to(at::kFloat);
  const long K = task.num_classes();
  at::Tensor sum = at::zeros({K, 40, 33, 50}), weight = at::zeros({40, 33, 50});
  for (long z : {0L, 8L})
    for (long y : {0L, 1L})
      for (long x : {0L, 9L, 18L}) {
        sum.index({Slice(), Slice(z, z + 32), Slice(y, y + 32), Slice(x, x + 32)}) +=
            window_probabilities(volume, z, y, x, 32) * g;
        weight.index({Slice(z, z + 32), Slice(y, y + 32), Slice(x, x + 32)}) += g;
      }
  infer::SlidingWindowOptions o;
  o.window = 32;
  o.overlap = 0.5;
  const at::Tensor got = infer::sliding_window_probabilities(*net, volume, task, o);
  EXPECT_LT((got - sum / weight).abs().max().item<float>(), 2e-6);
  // The importance differs from uniform weighting where windows overlap.
  o.gaussian = false;
  EXPECT_GT((got - infer::sliding_window_probabilities(*net, volume, task, o)).abs().max().item<float>(), 1e-4);
}

TEST_F(Window, AVolumeSmallerThanTheWindowIsPaddedWithZerosAndCropped) {
  // 20^3 with window 64: the window shrinks to 32 (20 rounded up to a
  // multiple of 16), the volume is zero-padded at the far end, one window.
  const at::Tensor small = volume.index({Slice(0, 20), Slice(0, 20), Slice(0, 20)}).contiguous();
  const at::Tensor padded = at::constant_pad_nd(small, {0, 12, 0, 12, 0, 12}, 0);
  const at::Tensor expected =
      window_probabilities(padded, 0, 0, 0, 32).index({Slice(), Slice(0, 20), Slice(0, 20), Slice(0, 20)});
  infer::SlidingWindowOptions o;
  o.window = 64;
  const at::Tensor got = infer::sliding_window_probabilities(*net, small, task, o);
  ASSERT_EQ(got.sizes(), expected.sizes());
  EXPECT_LT((got - expected).abs().max().item<float>(), 2e-6);
}

// Any predictor, not only the network (as MONAI's sliding window takes one):
// a voxel-wise predictor must come back voxel for voxel, whatever the
// windows, their overlap, the batch, the padding of a volume smaller than a
// window along an axis, or mirroring (a voxel-wise function commutes with
// flips), because every voxel's result is a weighted mean of equal values.
TEST(SlidingWindowInference, AVoxelWisePredictorComesBackVoxelForVoxel) {
  torch::manual_seed(5);
  const at::Tensor volume = torch::rand({37, 20, 45});  // 20 < the 32-voxel window along y
  const auto predictor = [](const at::Tensor& windows) {
    return at::cat({windows.gt(0.5).to(at::kFloat), windows * windows, 1 - windows}, 1);  // [n, 3, d, h, w]
  };
  const at::Tensor expected = at::stack({volume.gt(0.5).to(at::kFloat), volume * volume, 1 - volume});
  for (const long batch : {1L, 3L})
    for (const bool mirror : {false, true}) {
      infer::SlidingWindowOptions o;
      o.window = 32;
      o.overlap = 0.4;
      o.batch = batch;
      o.mirror_tta = mirror;
      o.mirror_axes = "xz";
      long calls = 0;
      const at::Tensor got = infer::sliding_window_inference(
          volume, 3,
          [&](const at::Tensor& w) {
            ++calls;
            return predictor(w);
          },
          o);
      ASSERT_EQ(got.sizes(), expected.sizes());
      EXPECT_LE((got - expected).abs().max().item<float>(), 1e-6) << "batch " << batch << " mirror " << mirror;
      // z: 37 -> 2 windows, y: 1 (20 padded to 32), x: 45 -> 2 windows (step 19); 4 flips with "xz".
      EXPECT_EQ(calls, (4 + batch - 1) / batch * (mirror ? 4 : 1)) << "batch " << batch;
    }
}

TEST(SlidingWindowInference, APredictorOfTheWrongShapeIsAnInternalError) {
  infer::SlidingWindowOptions o;
  o.window = 16;
  const auto two_classes = [](const at::Tensor& w) { return at::cat({w, w}, 1); };
  EXPECT_ANY_THROW(infer::sliding_window_inference(torch::rand({16, 16, 16}), 3, two_classes, o));
  EXPECT_NO_THROW(infer::sliding_window_inference(torch::rand({16, 16, 16}), 2, two_classes, o));
}
