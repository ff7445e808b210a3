// mask_box against a brute-force scan of every voxel, on random masks of
// odd shapes (one voxel, a plane, scattered points) and the empty mask.
#include <gtest/gtest.h>

#include <random>

#include <ATen/ATen.h>

#include "iris/common/mask_box.h"

namespace {

iris::MaskBox brute_force(const at::Tensor& mask) {
  iris::MaskBox b;
  b.lo = {1L << 40, 1L << 40, 1L << 40};
  b.hi = {-1, -1, -1};
  auto a = mask.accessor<bool, 3>();
  for (long z = 0; z < mask.size(0); ++z)
    for (long y = 0; y < mask.size(1); ++y)
      for (long x = 0; x < mask.size(2); ++x)
        if (a[z][y][x]) {
          const long p[3] = {z, y, x};
          for (int i = 0; i < 3; ++i) {
            b.lo[i] = std::min(b.lo[i], p[i]);
            b.hi[i] = std::max(b.hi[i], p[i]);
          }
        }
  return b;
}

}  // namespace

TEST(MaskBox, MatchesAVoxelByVoxelScan) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const long Z = 1 + rng() % 9, Y = 1 + rng() % 11, X = 1 + rng() % 13;
    at::Tensor mask = at::zeros({Z, Y, X}, at::kBool);
    const int points = 1 + rng() % 5;
    for (int p = 0; p < points; ++p) mask[rng() % Z][rng() % Y][rng() % X] = true;
    const auto box = iris::mask_box(mask.to(at::kFloat));  // any dtype: non-zero counts
    ASSERT_TRUE(box.has_value());
    const auto expected = brute_force(mask);
    EXPECT_EQ(box->lo, expected.lo) << "trial " << trial;
    EXPECT_EQ(box->hi, expected.hi) << "trial " << trial;
  }
}

TEST(MaskBox, EmptyMaskHasNoBoxAndCentreIsTheMiddleOfTheBox) {
  EXPECT_FALSE(iris::mask_box(at::zeros({4, 5, 6})).has_value());
  at::Tensor m = at::zeros({10, 10, 10});
  m[2][3][4] = 1;
  m[6][3][8] = 1;
  const auto box = iris::mask_box(m);
  ASSERT_TRUE(box.has_value());
  EXPECT_EQ(box->centre(), (std::array<double, 3>{4.0, 3.0, 6.0}));
  EXPECT_EQ(box->extent(0), 5);
  EXPECT_EQ(box->extent(1), 1);
}
