// Metrics on hand-computable shapes, and the distance transform against brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/eval/distance_transform.h"
#include "iris/eval/label_metrics.h"

namespace iris::eval {
namespace {

at::Tensor zeros(int64_t z, int64_t y, int64_t x) { return at::zeros({z, y, x}, at::kInt); }

void fill_box(at::Tensor& t, int32_t value, std::array<int64_t, 3> lo_zyx, std::array<int64_t, 3> hi_zyx) {
  t.slice(0, lo_zyx[0], hi_zyx[0]).slice(1, lo_zyx[1], hi_zyx[1]).slice(2, lo_zyx[2], hi_zyx[2]).fill_(value);
}

void fill_sphere(at::Tensor& t, int32_t value, std::array<double, 3> centre_zyx, double radius_voxels) {
  auto a = t.accessor<int32_t, 3>();
  for (int64_t z = 0; z < t.size(0); ++z)
    for (int64_t y = 0; y < t.size(1); ++y)
      for (int64_t x = 0; x < t.size(2); ++x) {
        const double dz = z - centre_zyx[0], dy = y - centre_zyx[1], dx = x - centre_zyx[2];
        if (dz * dz + dy * dy + dx * dx <= radius_voxels * radius_voxels) a[z][y][x] = value;
      }
}

const LabelMetrics& find_label(const std::vector<LabelMetrics>& all, int32_t label) {
  for (const auto& m : all)
    if (m.label == label) return m;
  throw std::runtime_error("label missing");
}

// Brute-force reference: surface voxels by the 6-neighbour rule, all pairwise distances.
std::vector<std::array<int64_t, 3>> brute_surface(const at::Tensor& t, int32_t label) {
  auto a = t.accessor<int32_t, 3>();
  std::vector<std::array<int64_t, 3>> out;
  const int64_t n[3] = {t.size(0), t.size(1), t.size(2)};
  for (int64_t z = 0; z < n[0]; ++z)
    for (int64_t y = 0; y < n[1]; ++y)
      for (int64_t x = 0; x < n[2]; ++x) {
        if (a[z][y][x] != label) continue;
        bool surface = false;
        const int64_t d[6][3] = {{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, -1, 0}, {0, 0, 1}, {0, 0, -1}};
        for (auto& o : d) {
          const int64_t p[3] = {z + o[0], y + o[1], x + o[2]};
          if (p[0] < 0 || p[1] < 0 || p[2] < 0 || p[0] >= n[0] || p[1] >= n[1] || p[2] >= n[2] ||
              a[p[0]][p[1]][p[2]] != label)
            surface = true;
        }
        if (surface) out.push_back({z, y, x});
      }
  return out;
}

std::vector<double> brute_directed(const std::vector<std::array<int64_t, 3>>& from,
                                   const std::vector<std::array<int64_t, 3>>& to,
                                   std::array<double, 3> spacing_zyx) {
  std::vector<double> out;
  for (auto& f : from) {
    double best = INFINITY;
    for (auto& t : to) {
      double s = 0;
      for (int i = 0; i < 3; ++i) s += std::pow((f[i] - t[i]) * spacing_zyx[i], 2);
      best = std::min(best, s);
    }
    out.push_back(std::sqrt(best));
  }
  return out;
}

TEST(DistanceTransform, SingleFeatureGivesAnalyticAnisotropicDistances) {
  BinaryVolume features{{5, 7, 9}, std::vector<uint8_t>(5 * 7 * 9, 0)};
  features.voxels[(2 * 7 + 3) * 9 + 4] = 1;
  const std::array<double, 3> spacing{3.0, 2.0, 0.5};
  const auto field = squared_distance_to_features(features, spacing);
  for (int64_t z = 0; z < 5; ++z)
    for (int64_t y = 0; y < 7; ++y)
      for (int64_t x = 0; x < 9; ++x) {
        const double expected = std::pow((z - 2) * 3.0, 2) + std::pow((y - 3) * 2.0, 2) +
                                std::pow((x - 4) * 0.5, 2);
        ASSERT_NEAR(field[(z * 7 + y) * 9 + x], expected, 1e-4) << z << "," << y << "," << x;
      }
}

TEST(DistanceTransform, RandomFeaturesMatchBruteForce) {
  std::mt19937 rng(7);
  std::bernoulli_distribution pick(0.03);
  const std::array<int64_t, 3> size{9, 11, 13};
  BinaryVolume features{size, std::vector<uint8_t>(9 * 11 * 13)};
  std::vector<std::array<int64_t, 3>> points;
  for (int64_t z = 0; z < 9; ++z)
    for (int64_t y = 0; y < 11; ++y)
      for (int64_t x = 0; x < 13; ++x)
        if (pick(rng)) {
          features.voxels[(z * 11 + y) * 13 + x] = 1;
          points.push_back({z, y, x});
        }
  ASSERT_GT(points.size(), 10u);
  const std::array<double, 3> spacing{2.5, 0.7, 1.3};
  const auto field = squared_distance_to_features(features, spacing);
  for (int64_t z = 0; z < 9; ++z)
    for (int64_t y = 0; y < 11; ++y)
      for (int64_t x = 0; x < 13; ++x) {
        double best = INFINITY;
        for (auto& p : points)
          best = std::min(best, std::pow((z - p[0]) * 2.5, 2) + std::pow((y - p[1]) * 0.7, 2) +
                                    std::pow((x - p[2]) * 1.3, 2));
        ASSERT_NEAR(field[(z * 11 + y) * 13 + x], best, 1e-3 * (1 + best));
      }
}

TEST(DistanceTransform, NoFeatureIsInfinite) {
  BinaryVolume none{{2, 3, 4}, std::vector<uint8_t>(24, 0)};
  for (float v : squared_distance_to_features(none, {1, 1, 1})) EXPECT_TRUE(std::isinf(v));
}

TEST(LabelMetrics, IdenticalMapsArePerfect) {
  auto ref = zeros(20, 20, 20);
  fill_sphere(ref, 3, {10, 10, 10}, 6);
  const auto m = compute_label_metrics(ref, ref.clone(), {1.0, 1.0, 1.0});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].label, 3);
  EXPECT_DOUBLE_EQ(m[0].dice, 1.0);
  EXPECT_DOUBLE_EQ(m[0].iou, 1.0);
  EXPECT_DOUBLE_EQ(m[0].hausdorff_max_mm, 0.0);
  EXPECT_DOUBLE_EQ(m[0].hausdorff_95_mm, 0.0);
  EXPECT_DOUBLE_EQ(m[0].normalized_surface_dice, 1.0);
  EXPECT_EQ(m[0].false_positives + m[0].false_negatives, 0);
}

TEST(LabelMetrics, CubeShiftedAlongAnisotropicAxis) {
  // 10³ cube shifted by 2 voxels in x; x spacing 1.5 mm, y 1 mm, z 2 mm.
  auto ref = zeros(30, 30, 40), pred = zeros(30, 30, 40);
  fill_box(ref, 1, {10, 10, 10}, {20, 20, 20});
  fill_box(pred, 1, {10, 10, 12}, {20, 20, 22});
  const auto all = compute_label_metrics(ref, pred, {1.5, 1.0, 2.0});
  const auto& m = find_label(all, 1);
  EXPECT_EQ(m.true_positives, 800);
  EXPECT_EQ(m.false_positives, 200);
  EXPECT_EQ(m.false_negatives, 200);
  EXPECT_EQ(m.true_negatives, 30 * 30 * 40 - 1200);
  EXPECT_DOUBLE_EQ(m.dice, 0.8);
  EXPECT_DOUBLE_EQ(m.iou, 800.0 / 1200.0);
  EXPECT_DOUBLE_EQ(m.precision, 0.8);
  EXPECT_DOUBLE_EQ(m.recall, 0.8);
  EXPECT_DOUBLE_EQ(m.reference_volume_mm3, 1000 * 3.0);
  EXPECT_DOUBLE_EQ(m.volume_difference_mm3, 0.0);
  // The pred face at x=21 is 2 voxels (3 mm) from the reference face x=19.
  EXPECT_NEAR(m.hausdorff_max_mm, 3.0, 1e-5);
  // Against brute force for the pooled metrics.
  const std::array<double, 3> sp{2.0, 1.0, 1.5};
  auto sr = brute_surface(ref, 1), sp_ = brute_surface(pred, 1);
  auto d1 = brute_directed(sp_, sr, sp), d2 = brute_directed(sr, sp_, sp);
  std::vector<float> pooled(d1.begin(), d1.end());
  pooled.insert(pooled.end(), d2.begin(), d2.end());
  double sum = 0;
  int within = 0;
  for (float d : pooled) {
    sum += d;
    within += d <= 2.0;
  }
  EXPECT_NEAR(m.average_surface_distance_mm, sum / pooled.size(), 1e-5);
  EXPECT_NEAR(m.normalized_surface_dice, double(within) / pooled.size(), 1e-12);
  std::sort(pooled.begin(), pooled.end());
  const double pos = 0.95 * (pooled.size() - 1);
  const size_t lo = size_t(pos);
  const double expected95 = pooled[lo] + (pooled[lo + 1] - pooled[lo]) * (pos - lo);
  EXPECT_NEAR(m.hausdorff_95_mm, expected95, 1e-5);
  EXPECT_GT(m.hausdorff_95_mm, 0.0);
  EXPECT_LE(m.hausdorff_95_mm, m.hausdorff_max_mm);
}

TEST(LabelMetrics, SpheresAtKnownOffsetWithAnisotropicSpacing) {
  // Radius-8 spheres, the prediction 3 slices higher; slices are 2 mm apart,
  // so the poles are exactly 6 mm apart and nothing is farther.
  auto ref = zeros(40, 30, 30), pred = zeros(40, 30, 30);
  fill_sphere(ref, 2, {18, 15, 15}, 8);
  fill_sphere(pred, 2, {21, 15, 15}, 8);
  const auto m = find_label(compute_label_metrics(ref, pred, {1.0, 1.0, 2.0}), 2);
  EXPECT_NEAR(m.hausdorff_max_mm, 6.0, 1e-5);
  EXPECT_EQ(m.reference_voxels, m.prediction_voxels);
  EXPECT_NEAR(m.volume_difference_mm3, 0.0, 1e-9);
  // Brute-force HD95 and ASSD.
  const std::array<double, 3> sp{2.0, 1.0, 1.0};
  auto sr = brute_surface(ref, 2), spr = brute_surface(pred, 2);
  auto d1 = brute_directed(spr, sr, sp), d2 = brute_directed(sr, spr, sp);
  std::vector<float> pooled(d1.begin(), d1.end());
  pooled.insert(pooled.end(), d2.begin(), d2.end());
  double sum = 0;
  for (float d : pooled) sum += d;
  EXPECT_NEAR(m.average_surface_distance_mm, sum / pooled.size(), 1e-4);
  std::vector<float> copy = pooled;
  EXPECT_NEAR(m.hausdorff_95_mm, percentile(copy, 95), 1e-5);
  // Worst error sits on a pole (x, y at the centre column).
  EXPECT_EQ(m.worst_error_zyx[1], 15);
  EXPECT_EQ(m.worst_error_zyx[2], 15);
}

TEST(LabelMetrics, EmptyConventionsFollowNnUNet) {
  auto ref = zeros(10, 10, 10), pred = zeros(10, 10, 10);
  fill_box(ref, 1, {2, 2, 2}, {5, 5, 5});  // label 1 only in the reference
  fill_box(pred, 2, {6, 6, 6}, {8, 8, 8}); // label 2 only in the prediction
  MetricOptions options;
  options.labels = {1, 2, 3};  // 3 is nowhere
  const auto all = compute_label_metrics(ref, pred, {1, 1, 1}, options);
  ASSERT_EQ(all.size(), 3u);
  const auto& missed = find_label(all, 1);
  EXPECT_DOUBLE_EQ(missed.dice, 0.0);
  EXPECT_DOUBLE_EQ(missed.recall, 0.0);
  EXPECT_TRUE(std::isnan(missed.precision));
  EXPECT_TRUE(std::isnan(missed.hausdorff_max_mm));
  EXPECT_TRUE(std::isnan(missed.hausdorff_95_mm));
  EXPECT_DOUBLE_EQ(missed.normalized_surface_dice, 0.0);
  EXPECT_EQ(missed.false_negatives, 27);
  const auto& spurious = find_label(all, 2);
  EXPECT_DOUBLE_EQ(spurious.dice, 0.0);
  EXPECT_TRUE(std::isnan(spurious.recall));
  EXPECT_DOUBLE_EQ(spurious.precision, 0.0);
  EXPECT_EQ(spurious.false_positives, 8);
  const auto& absent = find_label(all, 3);
  EXPECT_TRUE(std::isnan(absent.dice));
  EXPECT_TRUE(std::isnan(absent.iou));
  EXPECT_TRUE(std::isnan(absent.normalized_surface_dice));
  EXPECT_EQ(absent.true_negatives, 1000);
}

TEST(LabelMetrics, DefaultLabelsAreNonZeroValuesOfEitherMap) {
  auto ref = zeros(6, 6, 6), pred = zeros(6, 6, 6);
  fill_box(ref, 4, {0, 0, 0}, {2, 2, 2});
  fill_box(pred, 9, {3, 3, 3}, {5, 5, 5});
  const auto all = compute_label_metrics(ref, pred, {1, 1, 1});
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].label, 4);
  EXPECT_EQ(all[1].label, 9);
}

TEST(LabelMetrics, ObjectTouchingTheImageBorderHasASurfaceThere) {
  // Whole-image reference vs a prediction missing the last slice: the
  // border faces are surface, so HD is one slice (2 mm), not undefined.
  auto ref = at::ones({5, 4, 4}, at::kInt), pred = at::ones({5, 4, 4}, at::kInt);
  pred.select(0, 4).fill_(0);
  const auto m = compute_label_metrics(ref, pred, {1, 1, 2})[0];
  EXPECT_NEAR(m.hausdorff_max_mm, 2.0, 1e-6);
}

TEST(LabelMetrics, RejectsFloatingPointAndMismatchedMaps) {
  EXPECT_THROW(compute_label_metrics(at::zeros({2, 2, 2}), at::zeros({2, 2, 2}), {1, 1, 1}), Error);
  EXPECT_THROW(compute_label_metrics(zeros(2, 2, 2), zeros(2, 2, 3), {1, 1, 1}), Error);
}

TEST(Percentile, MatchesNumpyLinearInterpolation) {
  std::vector<float> v{4, 1, 3, 2};
  EXPECT_NEAR(percentile(v, 95), 3.85, 1e-6);  // numpy.percentile([1,2,3,4], 95)
  std::vector<float> one{7};
  EXPECT_DOUBLE_EQ(percentile(one, 95), 7.0);
  std::vector<float> none;
  EXPECT_TRUE(std::isnan(percentile(none, 95)));
}

}  // namespace
}  // namespace iris::eval
