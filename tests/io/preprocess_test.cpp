// Spatial preprocessing and its inverse on real files: MNI templates (ch2 +
// the AAL atlas on the same grid), the ITK Kmeans example (2x2x3 mm, axes
// permuted by its qform) and an oblique DICOM series.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <torch/types.h>

#include "support/test_support.h"
#include "iris/common/error.h"
#include "iris/io/image_io.h"
#include "iris/io/preprocess.h"
#include "iris/io/resample.h"

using iris::testing::error_of;

namespace fs = std::filesystem;
using iris::io::Geometry;
using iris::io::Image;
using iris::io::PreprocessConfig;

namespace {

const std::string kTemplates = "/usr/share/mricron/templates/";
const std::string kKmeansDir = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
const std::string kKmeans = kKmeansDir + "KmeansTest_T1UCharRaw.nii.gz";
const std::string kKmeansLabels = kKmeansDir + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz";
const std::string kObliqueMr =
    iris::testing::kObliqueMr;



std::array<double, 3> point_of(const Geometry& g, long i, long j, long k) {
  const double idx[3] = {double(i), double(j), double(k)};
  std::array<double, 3> p = g.origin;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) p[r] += g.direction[3 * r + c] * g.spacing[c] * idx[c];
  return p;
}

// Nearest voxel index of a physical point (direction is orthonormal).
std::array<long, 3> index_of(const Geometry& g, const std::array<double, 3>& p) {
  std::array<long, 3> idx{};
  for (int c = 0; c < 3; ++c) {
    double t = 0;
    for (int r = 0; r < 3; ++r) t += g.direction[3 * r + c] * (p[r] - g.origin[r]);
    idx[c] = std::lround(t / g.spacing[c]);
  }
  return idx;
}

double dice(const at::Tensor& a, const at::Tensor& b, int label) {
  const auto ma = a == label, mb = b == label;
  const double both = (ma & mb).sum().item<double>();
  const double total = ma.sum().item<double>() + mb.sum().item<double>();
  return total == 0 ? 1.0 : 2 * both / total;
}

double correlation(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.to(at::kDouble).flatten(), y = b.to(at::kDouble).flatten();
  const auto xc = x - x.mean(), yc = y - y.mean();
  return ((xc * yc).sum() / (xc.norm() * yc.norm())).item<double>();
}

PreprocessConfig spatial_only(bool reorient, std::optional<std::array<double, 3>> spacing, bool crop) {
  PreprocessConfig c;
  c.reorient = reorient;
  c.spacing = spacing;
  c.crop_foreground = crop;
  c.intensity = "none";  // keep intensities comparable with the source
  return c;
}

class PreprocessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("iris_preprocess_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string tmp(const std::string& name) const { return (dir_ / name).string(); }

  // Writes an inverted image and reads it back: geometry must survive the
  // file to 1e-4 mm (NIfTI stores float32, so this is the real-world check).
  void expect_lands_on_source(const Image& inverted, const Image& source, const std::string& name) {
    iris::io::write_image(inverted, tmp(name));
    const Image reread = iris::io::read_image(tmp(name));
    EXPECT_TRUE(reread.geometry.same_grid(source.geometry, 1e-4))
        << reread.geometry.describe() << " vs " << source.geometry.describe();
  }

  fs::path dir_;
};

// ---------------------------------------------------------------- config

TEST(PreprocessConfigTest, DefaultsAndTextRoundTrip) {
  const auto defaults = PreprocessConfig::from_config(iris::ConfigMap{});
  EXPECT_TRUE(defaults.reorient);
  ASSERT_TRUE(defaults.spacing.has_value());
  EXPECT_EQ(*defaults.spacing, (std::array<double, 3>{1.5, 1.5, 1.5}));
  EXPECT_FALSE(defaults.n4);
  EXPECT_EQ(defaults.to_config().to_text(), PreprocessConfig{}.to_config().to_text());

  iris::ConfigMap m;
  m.set("spacing", "[0.8, 0.8, 2.5]");
  m.set("intensity", "ct-abdomen");
  m.set("crop_threshold", "-500");
  m.set("interpolation", "bspline");
  m.set("label_interpolation", "per-label-linear");
  m.set("n4", "true");
  m.set("n4_iterations", "[20, 10, 5]");
  const auto c = PreprocessConfig::from_config(m);
  EXPECT_EQ(*c.spacing, (std::array<double, 3>{0.8, 0.8, 2.5}));
  EXPECT_TRUE(c.crop.use_threshold);
  EXPECT_EQ(c.crop.threshold, -500);
  EXPECT_EQ(c.image_interpolation, iris::io::Interpolation::kBSpline);
  EXPECT_EQ(c.n4_options.iterations, (std::array<int, 3>{20, 10, 5}));
  // Text -> struct -> text is stable (the cache key relies on it).
  const std::string text = c.to_config().to_text();
  EXPECT_EQ(PreprocessConfig::from_config(iris::ConfigMap::parse_text(text, "t")).to_config().to_text(), text);

  iris::ConfigMap iso, none;
  iso.set("spacing", "2");
  none.set("spacing", "none");
  EXPECT_EQ(*PreprocessConfig::from_config(iso).spacing, (std::array<double, 3>{2, 2, 2}));
  EXPECT_FALSE(PreprocessConfig::from_config(none).spacing.has_value());
}

TEST(PreprocessConfigTest, RejectsBadKeysAndValuesWithSuggestions) {
  iris::ConfigMap typo;
  typo.set("spacng", "1.5");
  const std::string e1 = error_of([&] { PreprocessConfig::from_config(typo); });
  EXPECT_NE(e1.find("spacng"), std::string::npos) << e1;
  EXPECT_NE(e1.find("spacing"), std::string::npos) << e1;

  iris::ConfigMap scheme;
  scheme.set("intensity", "ct-brian");
  const std::string e2 = error_of([&] { PreprocessConfig::from_config(scheme); });
  EXPECT_NE(e2.find("did you mean 'ct-brain'"), std::string::npos) << e2;

  iris::ConfigMap label_interp;
  label_interp.set("label_interpolation", "linear");
  EXPECT_NE(error_of([&] { PreprocessConfig::from_config(label_interp); }).find("nearest or per-label-linear"),
            std::string::npos);
  iris::ConfigMap bad_spacing;
  bad_spacing.set("spacing", "[1, 2]");
  EXPECT_NE(error_of([&] { PreprocessConfig::from_config(bad_spacing); }).find("preprocess.spacing"),
            std::string::npos);
  iris::ConfigMap negative;
  negative.set("spacing", "-1");
  EXPECT_NE(error_of([&] { PreprocessConfig::from_config(negative); }).find("positive"), std::string::npos);
  iris::ConfigMap words;
  words.set("spacing", "[1, x, 2]");
  EXPECT_NE(error_of([&] { PreprocessConfig::from_config(words); }).find("not a number"), std::string::npos);
}

// ---------------------------------------------------------------- steps

// Every axis permutation with every flip: the canonical frame has identity
// direction, voxels keep their physical position, and the inverse is exact.
TEST(ReorientationTest, AllPermutationsAndFlipsAreExactAndInvertible) {
  const at::Tensor voxels = at::arange(4 * 5 * 6, at::kFloat).reshape({6, 5, 4});  // z=6, y=5, x=4
  std::array<int, 3> perm{0, 1, 2};
  int cases = 0;
  do {
    for (int signs = 0; signs < 8; ++signs) {
      Geometry g;
      g.size = {4, 5, 6};
      g.spacing = {0.5, 1.0, 2.5};
      g.origin = {10, -20, 30};
      g.direction.fill(0);
      // Image axis c runs along LPS axis perm[c], with sign from `signs`.
      for (int c = 0; c < 3; ++c) g.direction[3 * perm[c] + c] = (signs >> c) & 1 ? -1.0 : 1.0;
      const auto r = iris::io::canonical_reorientation(g);
      const Geometry out = iris::io::reoriented_geometry(g, r);
      EXPECT_EQ(out.direction, (std::array<double, 9>{1, 0, 0, 0, 1, 0, 0, 0, 1}));
      const at::Tensor moved = iris::io::reorient_voxels(voxels, r);
      ASSERT_EQ(moved.size(2), out.size[0]);
      ASSERT_EQ(moved.size(0), out.size[2]);
      for (long k : {0L, 3L, 5L})
        for (long j : {0L, 4L})
          for (long i : {0L, 1L, 3L}) {
            const auto idx = index_of(out, point_of(g, i, j, k));
            EXPECT_EQ(moved[idx[2]][idx[1]][idx[0]].item<float>(), voxels[k][j][i].item<float>());
          }
      EXPECT_TRUE(torch::equal(iris::io::undo_reorientation(moved, r), voxels));
      // A [C,Z,Y,X] tensor moves the same way per channel.
      const at::Tensor two = at::stack({voxels, -voxels});
      EXPECT_TRUE(torch::equal(iris::io::reorient_voxels(two, r)[1], -moved));
      ++cases;
    }
  } while (std::next_permutation(perm.begin(), perm.end()));
  EXPECT_EQ(cases, 48);
}

TEST(ForegroundBoxTest, FindsTheBodyPlusMargin) {
  Geometry g;
  g.size = {40, 30, 20};
  g.spacing = {1.0, 2.0, 0.5};
  at::Tensor v = at::zeros({20, 30, 40});
  v.slice(0, 5, 12).slice(1, 10, 20).slice(2, 3, 33).fill_(100);
  iris::io::ForegroundOptions o;
  o.margin_mm = 2.0;  // 2 voxels in x, 1 in y, 4 in z
  const auto box = iris::io::foreground_box(v, g, o);
  EXPECT_EQ(box.begin, (std::array<long, 3>{1, 9, 1}));
  EXPECT_EQ(box.end, (std::array<long, 3>{35, 21, 16}));
  o.margin_mm = 100;  // clipped to the image
  EXPECT_TRUE(iris::io::foreground_box(v, g, o).covers_whole(g));
  // CT-like: air at -1000 everywhere is not the body with a -500 threshold.
  at::Tensor ct = at::where(v > 0, at::full({}, 40.0f), at::full({}, -1000.0f));
  iris::io::ForegroundOptions body;
  body.use_threshold = true;
  body.threshold = -500;
  body.margin_mm = 0;
  const auto ct_box = iris::io::foreground_box(ct, g, body);
  EXPECT_EQ(ct_box.begin, (std::array<long, 3>{3, 10, 5}));
  EXPECT_EQ(ct_box.end, (std::array<long, 3>{33, 20, 12}));
  // Crop + pad back is the identity inside the box.
  const at::Tensor cropped = iris::io::crop_voxels(v, box);
  EXPECT_TRUE(torch::equal(iris::io::pad_back(cropped, box, g), v));
}

// ---------------------------------------------------------------- pipeline

// Kmeans: axes permuted by the qform, 2x2x3 mm. Reorient + crop only: the
// network grid has the identity direction and labels come back exactly.
TEST_F(PreprocessTest, KmeansReorientCropRoundTripIsExact) {
  REQUIRE_DATA(kKmeans);
  REQUIRE_DATA(kKmeansLabels);
  const Image image = iris::io::read_image(kKmeans);
  const Image labels = iris::io::read_labels(kKmeansLabels);
  ASSERT_TRUE(labels.geometry.same_grid(image.geometry));
  const std::array<double, 9> identity{1, 0, 0, 0, 1, 0, 0, 0, 1};
  ASSERT_NE(image.geometry.direction, identity);

  const auto pre = iris::io::preprocess(image, spatial_only(true, std::nullopt, true));
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(pre.geometry.direction[i], identity[i], 1e-6);
  EXPECT_FALSE(pre.resampled);
  EXPECT_FALSE(pre.crop.covers_whole(pre.reoriented_geometry)) << "the head should be cropped";
  // Same voxel, same place: the value at a physical point is unchanged.
  const auto p = point_of(image.geometry, 60, 70, 20);
  const auto q = index_of(pre.geometry, p);
  EXPECT_EQ(pre.voxels[q[2]][q[1]][q[0]].item<float>(), image.voxels[20][70][60].item<float>());

  const auto pre_labels = iris::io::preprocess_labels(labels, pre);
  EXPECT_EQ(pre_labels.voxels.sizes(), pre.voxels.sizes());
  const Image back = iris::io::invert_to_source(pre_labels.voxels, pre_labels, true);
  EXPECT_TRUE(back.geometry.same_grid(image.geometry, 0));
  // Exact inside the crop box; outside it (k-means labels the background
  // too) the inverse holds 0 and invents nothing.
  const auto differ = back.voxels != labels.voxels;
  EXPECT_EQ((differ & (back.voxels != 0)).sum().item<int64_t>(), 0);
  const auto kept = iris::io::undo_reorientation(
      iris::io::pad_back(at::ones(pre.voxels.sizes(), at::kInt), pre.crop, pre.reoriented_geometry), pre.reorientation);
  EXPECT_EQ((differ & (kept != 0)).sum().item<int64_t>(), 0);
  EXPECT_GT((kept == 0).sum().item<int64_t>(), 0);
  // Without the crop the round trip is exact everywhere.
  const auto whole = iris::io::preprocess(image, spatial_only(true, std::nullopt, false));
  const auto whole_labels = iris::io::preprocess_labels(labels, whole);
  EXPECT_TRUE(torch::equal(iris::io::invert_to_source(whole_labels.voxels, whole_labels, true).voxels, labels.voxels));
  const Image image_back = iris::io::invert_to_source(pre.voxels, pre, false);
  const auto inside = image_back.voxels != 0;
  EXPECT_TRUE(torch::equal(image_back.voxels.masked_select(inside), image.voxels.masked_select(inside)));
  expect_lands_on_source(back, image, "kmeans_labels_back.nii.gz");
}

// ch2 + AAL (116 regions, 1 mm): reorient + crop is exact; resampling to
// 1.5 mm and back keeps every large region at Dice > 0.95.
TEST_F(PreprocessTest, AtlasRoundTripsThroughResampling) {
  REQUIRE_DATA(kTemplates + "ch2.nii.gz");
  const Image image = iris::io::read_image(kTemplates + "ch2.nii.gz");
  const Image atlas = iris::io::read_labels(kTemplates + "aal.nii.gz");

  const auto exact = iris::io::preprocess(image, spatial_only(true, std::nullopt, true));
  const auto exact_labels = iris::io::preprocess_labels(atlas, exact);
  EXPECT_TRUE(torch::equal(iris::io::invert_to_source(exact_labels.voxels, exact_labels, true).voxels,
                           atlas.voxels));

  const auto pre = iris::io::preprocess(image, spatial_only(true, std::array<double, 3>{1.5, 1.5, 1.5}, true));
  EXPECT_TRUE(pre.resampled);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pre.geometry.spacing[i], 1.5);
  // 1 mm -> 1.5 mm: two thirds of the voxels per axis (of the cropped box).
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(double(pre.geometry.size[i]), pre.crop.size()[i] / 1.5, 0.51) << "axis " << i;
  // Same physical box: first outer faces coincide.
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(pre.geometry.origin[i] - 0.75, pre.cropped_geometry.origin[i] - 0.5, 1e-9);

  const auto pre_labels = iris::io::preprocess_labels(atlas, pre);
  EXPECT_EQ(pre_labels.voxels.scalar_type(), at::kInt);
  EXPECT_EQ(pre_labels.voxels.sizes(), pre.voxels.sizes());
  const Image back = iris::io::invert_to_source(pre_labels.voxels, pre_labels, true);
  EXPECT_TRUE(back.geometry.same_grid(atlas.geometry, 0));
  const auto counts = at::bincount(atlas.voxels.flatten().to(at::kLong));
  int large = 0;
  double dice_sum = 0;
  for (int label = 1; label < counts.numel(); ++label) {
    if (counts[label].item<int64_t>() < 20000) continue;
    ++large;
    const double d = dice(back.voxels, atlas.voxels, label);
    // Nearest there and back moves each boundary by up to half a voxel: the
    // thin AAL regions (~20k voxels, 1 mm) keep Dice 0.92-0.95.
    EXPECT_GT(d, 0.9) << "label " << label;
    dice_sum += d;
  }
  EXPECT_GT(large, 20);
  std::cout << "[aal] mean Dice of " << large << " regions after 1.5 mm and back: " << dice_sum / large << "\n";
  EXPECT_GT(dice_sum / large, 0.94);
  const Image image_back = iris::io::invert_to_source(pre.voxels, pre, false);
  EXPECT_GT(correlation(image_back.voxels, image.voxels), 0.98);
  expect_lands_on_source(back, atlas, "aal_back.nii.gz");
}

// Per-label linear interpolation on the Kmeans classes, 2x2x3 mm -> 1.5 mm.
TEST_F(PreprocessTest, PerLabelLinearKeepsClasses) {
  REQUIRE_DATA(kKmeansLabels);
  const Image image = iris::io::read_image(kKmeans);
  const Image labels = iris::io::read_labels(kKmeansLabels);
  auto config = spatial_only(true, std::array<double, 3>{1.5, 1.5, 1.5}, false);
  config.label_interpolation = iris::io::Interpolation::kPerLabelLinear;
  const auto pre = iris::io::preprocess(image, config);
  const auto pre_labels = iris::io::preprocess_labels(labels, pre);
  const auto values = std::get<0>(at::_unique(labels.voxels));
  EXPECT_TRUE(torch::equal(std::get<0>(at::_unique(pre_labels.voxels)), values));
  const Image back = iris::io::invert_to_source(pre_labels.voxels, pre_labels, true);
  auto nearest = config;
  nearest.label_interpolation = iris::io::Interpolation::kNearest;
  const auto pre_nearest = iris::io::preprocess(image, nearest);
  const auto nearest_labels = iris::io::preprocess_labels(labels, pre_nearest);
  const Image back_nearest = iris::io::invert_to_source(nearest_labels.voxels, nearest_labels, true);
  for (int64_t k = 0; k < values.numel(); ++k) {
    const int v = values[k].item<int>();
    std::cout << "[kmeans] class " << v << ": " << (labels.voxels == v).sum().item<int64_t>() << " voxels, Dice per-label-linear "
              << dice(back.voxels, labels.voxels, v) << ", nearest " << dice(back_nearest.voxels, labels.voxels, v) << "\n";
    if ((labels.voxels == v).sum().item<int64_t>() < 1000) continue;  // 126-voxel class 0: too small to judge
    EXPECT_GT(dice(back.voxels, labels.voxels, v), 0.95) << "class " << v;
    EXPECT_GT(dice(back_nearest.voxels, labels.voxels, v), 0.95) << "class " << v;
  }
}

// Oblique DICOM (read once: slow). The network grid stays close to identity
// (small obliquity kept, nothing interpolated by the reorientation), and the
// inverse lands on the DICOM grid to 1e-4 mm after a NIfTI round trip.
#ifdef IRIS_HAVE_ITK  // DICOM needs the ITK build
TEST_F(PreprocessTest, ObliqueDicomSeriesRoundTrip) {
  REQUIRE_DATA(kObliqueMr);
  const Image image = iris::io::read_image(kObliqueMr);
  const auto pre = iris::io::preprocess(image, spatial_only(true, std::array<double, 3>{1.5, 1.5, 1.5}, true));
  for (int c = 0; c < 3; ++c) EXPECT_GT(pre.geometry.direction[4 * c], 0.9) << "axis " << c;
  const Image back = iris::io::invert_to_source(pre.voxels, pre, false);
  EXPECT_TRUE(back.geometry.same_grid(image.geometry, 0));
  EXPECT_EQ(back.voxels.sizes(), image.voxels.sizes());
  EXPECT_GT(correlation(back.voxels, image.voxels), 0.9);
  expect_lands_on_source(back, image, "dicom_back.nii.gz");
  // Probability maps [C,Z,Y,X] go back channel by channel.
  const at::Tensor probs = at::stack({at::full(pre.voxels.sizes(), 0.25f), at::full(pre.voxels.sizes(), 0.75f)});
  const Image probs_back = iris::io::invert_to_source(probs, pre, false);
  ASSERT_EQ(probs_back.voxels.dim(), 4);
  EXPECT_EQ(probs_back.voxels.size(0), 2);
  EXPECT_NEAR(probs_back.voxels[1].max().item<float>(), 0.75f, 1e-5);
}
#endif

// CT-like phantom in HU: the presets clip where they should and z-score.
TEST(IntensityPresetTest, CtWindowsOnSyntheticVolume) {
  Image ct;
  ct.geometry.size = {32, 32, 16};
  at::Tensor v = at::full({16, 32, 32}, -2048.0f);                 // outside the scanner FOV
  v.slice(1, 4, 28).slice(2, 4, 28).fill_(-1000.0f);             // air
  v.slice(1, 8, 24).slice(2, 8, 24).fill_(-100.0f);              // fat
  v.slice(1, 10, 22).slice(2, 10, 22).fill_(40.0f);              // soft tissue
  v.slice(1, 14, 18).slice(2, 14, 18).fill_(1200.0f);            // bone
  ct.voxels = v;
  auto config = spatial_only(false, std::nullopt, false);
  auto value_of = [&](const at::Tensor& t, long y, long x) { return t[8][y][x].item<float>(); };

  config.intensity = "ct";  // [-990, 500]
  const auto out = iris::io::preprocess(ct, config).voxels;
  EXPECT_NEAR(out.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(out.std().item<double>(), 1.0, 1e-4);
  EXPECT_EQ(value_of(out, 0, 0), value_of(out, 5, 5));     // -2048 and -1000 both clip to -990
  EXPECT_LT(value_of(out, 5, 5), value_of(out, 9, 9));     // air < fat
  EXPECT_LT(value_of(out, 9, 9), value_of(out, 11, 11));   // fat < tissue
  EXPECT_LT(value_of(out, 11, 11), value_of(out, 15, 15)); // tissue < bone (clipped at 500)
  // The z-score of the clipped window, recomputed by hand.
  const auto clipped = v.clamp(-990, 500);
  const double expected = (500 - clipped.mean().item<double>()) / clipped.std().item<double>();
  EXPECT_NEAR(value_of(out, 15, 15), expected, 1e-4);

  config.intensity = "ct-brain";  // [0, 80]: everything below 0 HU is one value
  const auto brain = iris::io::preprocess(ct, config).voxels;
  EXPECT_EQ(value_of(brain, 5, 5), value_of(brain, 9, 9));
  EXPECT_LT(value_of(brain, 9, 9), value_of(brain, 11, 11));
  config.intensity = "ct-abdomen";  // [-160, 240]: fat stays distinct from air? no: -100 > -160
  const auto abdomen = iris::io::preprocess(ct, config).voxels;
  EXPECT_LT(value_of(abdomen, 5, 5), value_of(abdomen, 9, 9));
  EXPECT_EQ(value_of(abdomen, 0, 0), value_of(abdomen, 5, 5));

  // Body crop with an absolute HU threshold keeps the air-bordered body.
  config.crop_foreground = true;
  config.crop.use_threshold = true;
  config.crop.threshold = -500;
  config.crop.margin_mm = 1;
  const auto cropped = iris::io::preprocess(ct, config);
  EXPECT_EQ(cropped.crop.begin, (std::array<long, 3>{7, 7, 0}));
  EXPECT_EQ(cropped.crop.end, (std::array<long, 3>{25, 25, 16}));
}

// N4 removes a smooth multiplicative field from a phantom.
#ifdef IRIS_HAVE_ITK  // N4 is ITK's
TEST(N4Test, RemovesASmoothBiasField) {
  Geometry g;
  g.size = {48, 48, 48};
  g.spacing = {2, 2, 2};
  const auto z = at::arange(48, at::kFloat).view({48, 1, 1});
  const auto y = at::arange(48, at::kFloat).view({1, 48, 1});
  const auto x = at::arange(48, at::kFloat).view({1, 1, 48});
  const auto r2 = (x - 24).pow(2) + (y - 24).pow(2) + (z - 24).pow(2);
  const auto inside = r2 < 18.0 * 18.0;
  const at::Tensor phantom = at::where(inside, at::full({}, 100.0f), at::zeros({}));
  const at::Tensor biased = phantom * at::exp(0.4f * (x - 24) / 24.0f + 0.2f * (y - 24) / 24.0f);
  auto cv = [&](const at::Tensor& t) {
    const auto values = t.masked_select(inside);
    return (values.std() / values.mean()).item<double>();
  };
  iris::io::N4Options o;
  o.shrink_factor = 2;
  const at::Tensor corrected = iris::io::n4_bias_correct(biased, g, o);
  EXPECT_EQ(corrected.sizes(), biased.sizes());
  EXPECT_GT(cv(biased), 0.1);
  EXPECT_LT(cv(corrected), 0.5 * cv(biased)) << "before " << cv(biased) << ", after " << cv(corrected);
}
#endif

TEST_F(PreprocessTest, RefusesMismatchedLabelsAndTensors) {
  Image image;
  image.geometry.size = {8, 8, 8};
  image.voxels = at::rand({8, 8, 8});
  image.source = "img.nii.gz";
  const auto pre = iris::io::preprocess(image, spatial_only(true, std::array<double, 3>{2, 2, 2}, false));
  Image labels;
  labels.geometry = image.geometry;
  labels.geometry.spacing = {1, 1, 1.2};
  labels.voxels = at::zeros({8, 8, 8}, at::kInt);
  labels.source = "lbl.nii.gz";
  const std::string e = error_of([&] { iris::io::preprocess_labels(labels, pre); });
  EXPECT_NE(e.find("lbl.nii.gz vs img.nii.gz"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { iris::io::invert_to_source(at::zeros({3, 3, 3}), pre, false); })
                .find("not on the preprocessed grid"),
            std::string::npos);
}

}  // namespace
