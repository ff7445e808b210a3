// Our metrics against ITK's independent implementations, on real label maps
// (the AAL atlas and the ch2 brain template shipped with mricron).
//  - Dice / Jaccard: itk::LabelOverlapMeasuresImageFilter.
//  - Maximum Hausdorff: itk::HausdorffDistanceImageFilter fed with the
//    surface voxels (6-neighbour rule, computed here by a separate loop):
//    ITK measures between all foreground voxels, we between surfaces, so
//    feeding it surfaces makes the two definitions the same (see
//    docs/evaluation.md for why they differ on full masks).
//  - HD95 / ASSD: distances sampled from itk::SignedMaurerDistanceMapImageFilter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <ATen/ATen.h>
#include <itkHausdorffDistanceImageFilter.h>
#include <itkImage.h>
#include <itkLabelOverlapMeasuresImageFilter.h>
#include <itkSignedMaurerDistanceMapImageFilter.h>

#include "../support/test_support.h"
#include "iris/eval/label_metrics.h"
#include "iris/io/image_io.h"

namespace iris::eval {
namespace {

const char* kAtlas = "/usr/share/mricron/templates/aal.nii.gz";
const char* kHead = "/usr/share/mricron/templates/ch2.nii.gz";
const char* kBrain = "/usr/share/mricron/templates/ch2bet.nii.gz";

using LabelImage = itk::Image<int32_t, 3>;
using FloatImage = itk::Image<float, 3>;

// Deliberately anisotropic so that spacing handling is exercised.
const std::array<double, 3> kSpacingXyz{1.0, 1.5, 2.5};

LabelImage::Pointer to_itk(const at::Tensor& voxels_zyx) {
  const at::Tensor v = voxels_zyx.to(at::kInt).contiguous();
  auto image = LabelImage::New();
  LabelImage::SizeType size;
  size[0] = v.size(2);
  size[1] = v.size(1);
  size[2] = v.size(0);
  image->SetRegions(LabelImage::RegionType(size));
  LabelImage::SpacingType spacing;
  for (int i = 0; i < 3; ++i) spacing[i] = kSpacingXyz[i];
  image->SetSpacing(spacing);
  image->Allocate();
  std::copy(v.data_ptr<int32_t>(), v.data_ptr<int32_t>() + v.numel(), image->GetBufferPointer());
  return image;
}

// 1 where the voxel has `label` and a face neighbour without it (or the grid edge).
at::Tensor surface_mask(const at::Tensor& labels, int32_t label) {
  const at::Tensor m = (labels == label).to(at::kInt);
  at::Tensor interior = m.clone();
  for (int64_t axis = 0; axis < 3; ++axis) {
    const int64_t n = m.size(axis);
    // Neighbour at -1 and +1 along `axis`; the grid edge counts as outside.
    at::Tensor prev = at::zeros_like(m), next = at::zeros_like(m);
    prev.narrow(axis, 1, n - 1).copy_(m.narrow(axis, 0, n - 1));
    next.narrow(axis, 0, n - 1).copy_(m.narrow(axis, 1, n - 1));
    interior = interior * prev * next;
  }
  return m - interior;
}

double itk_surface_hausdorff(const at::Tensor& ref, const at::Tensor& pred, int32_t label) {
  using Filter = itk::HausdorffDistanceImageFilter<LabelImage, LabelImage>;
  auto filter = Filter::New();
  filter->SetInput1(to_itk(surface_mask(ref, label)));
  filter->SetInput2(to_itk(surface_mask(pred, label)));
  filter->SetUseImageSpacing(true);
  filter->Update();
  return filter->GetHausdorffDistance();
}

double itk_mask_hausdorff(const at::Tensor& ref, const at::Tensor& pred, int32_t label) {
  using Filter = itk::HausdorffDistanceImageFilter<LabelImage, LabelImage>;
  auto filter = Filter::New();
  filter->SetInput1(to_itk((ref == label).to(at::kInt)));
  filter->SetInput2(to_itk((pred == label).to(at::kInt)));
  filter->SetUseImageSpacing(true);
  filter->Update();
  return filter->GetHausdorffDistance();
}

// Distances (mm) from the voxels of `from_surface` to the surface `to_surface`.
std::vector<float> itk_directed_distances(const at::Tensor& from_surface, const at::Tensor& to_surface) {
  using Filter = itk::SignedMaurerDistanceMapImageFilter<LabelImage, FloatImage>;
  auto filter = Filter::New();
  filter->SetInput(to_itk(to_surface));
  filter->SetUseImageSpacing(true);
  filter->SetSquaredDistance(false);
  filter->SetInsideIsPositive(false);
  filter->Update();
  const float* field = filter->GetOutput()->GetBufferPointer();
  const at::Tensor from = from_surface.contiguous();
  const int32_t* f = from.data_ptr<int32_t>();
  std::vector<float> out;
  for (int64_t i = 0; i < from.numel(); ++i)
    if (f[i]) out.push_back(std::max(0.0f, field[i]));  // inside the surface set = 0
  return out;
}

struct ItkOverlap {
  double dice, jaccard;
};
ItkOverlap itk_overlap(const at::Tensor& ref, const at::Tensor& pred, int32_t label) {
  using Filter = itk::LabelOverlapMeasuresImageFilter<LabelImage>;
  auto filter = Filter::New();
  filter->SetSourceImage(to_itk(pred));
  filter->SetTargetImage(to_itk(ref));
  filter->Update();
  return {filter->GetDiceCoefficient(label), filter->GetJaccardCoefficient(label)};
}

// Shifts a [Z,Y,X] map by whole voxels, filling with background.
at::Tensor shifted(const at::Tensor& t, int64_t dz, int64_t dy, int64_t dx) {
  at::Tensor out = at::zeros_like(t);
  const int64_t d[3] = {dz, dy, dx};
  at::Tensor src = t, dst = out;
  for (int64_t a = 0; a < 3; ++a) {
    const int64_t n = t.size(a), s = d[a];
    src = src.narrow(a, s >= 0 ? 0 : -s, n - std::abs(s));
    dst = dst.narrow(a, s >= 0 ? s : 0, n - std::abs(s));
  }
  dst.copy_(src);
  return out;
}

// The box around `label` in either map plus a 2-voxel margin: ITK runs on this
// crop only (the surfaces, hence every metric, are the same as in full).
std::pair<at::Tensor, at::Tensor> crop_around(const at::Tensor& ref, const at::Tensor& pred, int32_t label) {
  const at::Tensor where = at::nonzero((ref == label) | (pred == label));
  at::Tensor a = ref, b = pred;
  for (int64_t axis = 0; axis < 3; ++axis) {
    const int64_t lo = std::max<int64_t>(0, where.select(1, axis).min().item<int64_t>() - 2);
    const int64_t hi = std::min<int64_t>(ref.size(axis) - 1, where.select(1, axis).max().item<int64_t>() + 2);
    a = a.narrow(axis, lo, hi - lo + 1);
    b = b.narrow(axis, lo, hi - lo + 1);
  }
  return {a.contiguous(), b.contiguous()};
}

void expect_agreement(const at::Tensor& full_ref, const at::Tensor& full_pred, const std::vector<int32_t>& labels) {
  MetricOptions options;
  options.labels = labels;
  const auto ours = compute_label_metrics(full_ref, full_pred, kSpacingXyz, options);
  ASSERT_EQ(ours.size(), labels.size());
  for (const auto& m : ours) {
    SCOPED_TRACE("label " + std::to_string(m.label));
    const auto [ref, pred] = crop_around(full_ref, full_pred, m.label);
    // The crop must not cut the label: the margin is background in both.
    ASSERT_EQ((ref == m.label).sum().item<int64_t>(), m.reference_voxels);
    ASSERT_GT(m.reference_voxels, 0);
    const ItkOverlap overlap = itk_overlap(ref, pred, m.label);
    EXPECT_NEAR(m.dice, overlap.dice, 1e-9);
    EXPECT_NEAR(m.iou, overlap.jaccard, 1e-9);

    EXPECT_NEAR(m.hausdorff_max_mm, itk_surface_hausdorff(ref, pred, m.label), 1e-3);

    const at::Tensor ref_surface = surface_mask(ref, m.label);
    const at::Tensor pred_surface = surface_mask(pred, m.label);
    std::vector<float> pooled = itk_directed_distances(pred_surface, ref_surface);
    const std::vector<float> back = itk_directed_distances(ref_surface, pred_surface);
    pooled.insert(pooled.end(), back.begin(), back.end());
    double sum = 0;
    for (float d : pooled) sum += d;
    EXPECT_NEAR(m.average_surface_distance_mm, sum / pooled.size(), 1e-3);
    EXPECT_NEAR(m.hausdorff_95_mm, percentile(pooled, 95.0), 1e-3);

    // On full masks ITK measures voxel sets, not surfaces: a prediction
    // voxel inside the reference counts 0 there but its distance to the
    // reference surface here. Ours can only be larger or equal on these
    // shifts; the gap is reported, not hidden.
    const double itk_full = itk_mask_hausdorff(ref, pred, m.label);
    EXPECT_GE(m.hausdorff_max_mm + 1e-3, itk_full);
  }
}

TEST(ItkAgreement, AtlasAgainstShiftedAtlas) {
  REQUIRE_DATA(kAtlas);
  const at::Tensor atlas = io::read_labels(kAtlas).voxels;
  const at::Tensor moved = shifted(atlas, 2, -1, 3);
  expect_agreement(atlas, moved, {1, 2, 37, 71});
}

TEST(ItkAgreement, AtlasAgainstErodedAndRelabelled) {
  REQUIRE_DATA(kAtlas);
  const at::Tensor atlas = io::read_labels(kAtlas).voxels;
  // Erode by removing each label's surface, then relabel one structure to
  // another so that one label has extra, distant false positives.
  at::Tensor eroded = atlas.clone();
  for (int32_t label : {3, 4, 41}) eroded.masked_fill_(surface_mask(atlas, label).to(at::kBool), 0);
  eroded.masked_fill_(atlas == 90, 3);
  expect_agreement(atlas, eroded, {3, 4, 41});
}

TEST(ItkAgreement, BrainMaskAgainstThresholdedHead) {
  REQUIRE_DATA(kHead);
  REQUIRE_DATA(kBrain);
  const io::Image head = io::read_image(kHead);
  const io::Image brain = io::read_image(kBrain);
  io::check_same_grid(head, brain);
  const at::Tensor reference = (brain.voxels > 0).to(at::kInt);
  const at::Tensor threshold = head.voxels.mean();
  const at::Tensor prediction = (head.voxels > threshold).to(at::kInt);
  expect_agreement(reference, prediction, {1});
}

}  // namespace
}  // namespace iris::eval
