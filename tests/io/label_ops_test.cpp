// iris-labels' operations: Otsu against an exhaustive search, relabelling,
// narrowing, and in-slice inpainting on planes whose answer is known.
#include <gtest/gtest.h>

#include <random>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/io/label_ops.h"

using namespace iris;

namespace {

// The threshold t maximising the between-class variance of {v <= t} and
// {v > t}, over every distinct value: the definition, not a histogram.
double exhaustive_otsu_split(const std::vector<double>& v, double* lower, double* upper) {
  std::vector<double> s = v;
  std::sort(s.begin(), s.end());
  double best = -1, cut = 0;
  const double n = static_cast<double>(s.size());
  double total = 0;
  for (double x : s) total += x;
  double below = 0;
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    below += s[i];
    if (s[i] == s[i + 1]) continue;
    const double w0 = (i + 1) / n, w1 = 1 - w0;
    const double m0 = below / (i + 1), m1 = (total - below) / (n - i - 1);
    const double between = w0 * w1 * (m0 - m1) * (m0 - m1);
    if (between > best) {
      best = between;
      cut = i;
    }
  }
  *lower = s[static_cast<size_t>(cut)];
  *upper = s[static_cast<size_t>(cut) + 1];
  return best;
}

}  // namespace

TEST(LabelOps, OtsuSplitsTwoModesWhereTheExhaustiveSearchDoes) {
  std::mt19937 rng(3);
  std::normal_distribution<double> dark(20, 4), bright(90, 9);
  std::vector<double> values;
  for (int i = 0; i < 3000; ++i) values.push_back(dark(rng));
  for (int i = 0; i < 1000; ++i) values.push_back(bright(rng));
  const at::Tensor volume = at::tensor(values, at::kDouble).reshape({4, 10, 100});
  double lower = 0, upper = 0;
  exhaustive_otsu_split(values, &lower, &upper);
  const double t = io::otsu_threshold(volume, "test");
  // The histogram has 256 bins over the range: the threshold lies within a
  // bin width of the exact split, and classifies almost every voxel the same.
  const double bin = (*std::max_element(values.begin(), values.end()) - *std::min_element(values.begin(), values.end())) / 256;
  EXPECT_GT(t, lower - bin);
  EXPECT_LT(t, upper + bin);
  long disagree = 0;
  for (double v : values) disagree += (v > t) != (v > lower);
  EXPECT_LT(disagree, 10);
  try {
    io::otsu_threshold(at::full({3, 3, 3}, 7.0), "iris-labels otsu: flat.nii.gz");
    FAIL() << "a constant image has no threshold";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "iris-labels otsu: flat.nii.gz");
  }
}

TEST(LabelOps, MappingKeepsOrZeroesTheRest) {
  const at::Tensor labels = at::tensor({0, 5, 37, 38, 41, 90}, at::kInt);
  const std::vector<LabelMapping> m{{37, 38, 1}, {41, 41, 2}};
  EXPECT_TRUE(at::equal(io::apply_label_mapping(labels, m), at::tensor({0, 0, 1, 1, 2, 0}, at::kLong)));
  EXPECT_TRUE(at::equal(io::apply_label_mapping(labels, {{37, 41, 0}}, -1), at::tensor({0, 5, 0, 0, 0, 90}, at::kLong)));
}

TEST(LabelOps, NarrowsToTheSmallestTypeOrTheTasksType) {
  EXPECT_EQ(io::narrow_labels(at::tensor({0, 255}, at::kLong)).scalar_type(), at::kByte);
  EXPECT_EQ(io::narrow_labels(at::tensor({0, 256}, at::kLong)).scalar_type(), at::kShort);
  EXPECT_EQ(io::narrow_labels(at::tensor({0, 40000}, at::kLong)).scalar_type(), at::kInt);
  // Type from the task's highest label, even when it is absent from this output.
  EXPECT_EQ(io::narrow_labels(at::tensor({0, 3}, at::kLong), 300).scalar_type(), at::kShort);
  EXPECT_EQ(io::narrow_labels(at::tensor({0, 40000}, at::kLong)).max().item<long>(), 40000);
}

TEST(LabelOps, InpaintingFillsHolesFromTheirSliceOnly) {
  // Slice 0 is constant 5, slice 1 constant 9; a hole through both.
  at::Tensor v = at::zeros({2, 7, 7});
  v[0].fill_(5);
  v[1].fill_(9);
  at::Tensor mask = at::zeros({2, 7, 7}, at::kBool);
  mask.index_put_({at::indexing::Slice(), at::indexing::Slice(2, 5), at::indexing::Slice(2, 5)}, true);
  v.masked_fill_(mask, 1000);  // burnt-in text
  const at::Tensor out = io::inpaint_in_slices(v, mask);
  EXPECT_NEAR(out[0].max().item<double>(), 5, 1e-5);
  EXPECT_NEAR(out[0].min().item<double>(), 5, 1e-5);
  EXPECT_NEAR(out[1].max().item<double>(), 9, 1e-5);
  EXPECT_NEAR(out[1].min().item<double>(), 9, 1e-5);
  // A linear ramp along x with a one-voxel-wide masked column: each filled
  // voxel is the mean of its known 3x3 neighbours, which is the ramp's value.
  at::Tensor ramp = at::arange(7, at::kFloat).view({1, 1, 7}).expand({1, 5, 7}).contiguous();
  at::Tensor column = at::zeros({1, 5, 7}, at::kBool);
  column.index_put_({0, at::indexing::Slice(), 3}, true);
  const at::Tensor filled = io::inpaint_in_slices(ramp.masked_fill(column, -50), column);
  EXPECT_TRUE(at::allclose(filled, ramp, 1e-5, 1e-5)) << filled;
}
