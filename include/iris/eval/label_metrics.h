#pragma once
// Overlap and surface-distance metrics of one label map pair, per label, in
// physical units. Conventions (nnU-Net's for empty masks) are in
// docs/evaluation.md; summary: a ratio whose denominator is 0 is NaN, and
// distances are NaN unless both masks are non-empty.
#include <array>
#include <cstdint>
#include <vector>

#include <ATen/Tensor.h>

namespace iris::eval {

struct LabelMetrics {
  int32_t label = 0;
  int64_t true_positives = 0, false_positives = 0, false_negatives = 0, true_negatives = 0;
  int64_t reference_voxels = 0, prediction_voxels = 0;  // nnU-Net's n_ref, n_pred
  double dice = 0, iou = 0, precision = 0, recall = 0;
  double reference_volume_mm3 = 0, prediction_volume_mm3 = 0;
  double volume_difference_mm3 = 0;   // prediction - reference
  double hausdorff_95_mm = 0;         // 95th percentile of both directed surface distances pooled
  double hausdorff_max_mm = 0;        // maximum surface distance, both directions
  double average_surface_distance_mm = 0;  // mean of both directed surface distances pooled
  double normalized_surface_dice = 0;      // share of surface voxels within the tolerance
  // Voxel index (z, y, x) of the error voxel farthest from the other surface
  // (or the first error voxel when no distance is defined); -1 when no error.
  std::array<int64_t, 3> worst_error_zyx{-1, -1, -1};
};

struct MetricOptions {
  // Labels to evaluate; empty = every non-zero value present in either map.
  std::vector<int32_t> labels;
  double tolerance_mm = 2.0;  // for the normalised surface Dice
};

// reference/prediction: integer label maps [Z, Y, X] on the same grid.
// spacing_xyz: voxel spacing in mm, x y z (Geometry's order).
// Returns one entry per label, in ascending label order.
std::vector<LabelMetrics> compute_label_metrics(const at::Tensor& reference,
                                                const at::Tensor& prediction,
                                                const std::array<double, 3>& spacing_xyz,
                                                const MetricOptions& options = {});

// The metrics of a label absent from both maps of a case with `voxel_count`
// voxels: all counts 0 except TN, every ratio and distance NaN.
LabelMetrics metrics_of_absent_label(int32_t label, int64_t voxel_count);

// numpy's default percentile (linear interpolation between order statistics).
// NaN for an empty input. Reorders `values`.
double percentile(std::vector<float>& values, double percent);

}  // namespace iris::eval
