#pragma once
// The preprocessing pipeline a volume goes through before the network sees
// it, driven by config, and its inverse that puts network outputs back onto
// the input grid. Steps, in order (each optional):
//   reorient (axis permutation/flip, exact) -> foreground crop (exact)
//   -> N4 bias correction (MR) -> resample to `spacing` -> intensity scheme.
// Crop comes before resampling so that the crop box is in whole input voxels
// (padding back is exact) and resampling touches less data.
#include <array>
#include <optional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

#include "iris/common/config_map.h"
#include "iris/common/image.h"
#include "iris/io/resample.h"

namespace iris::io {

// The toolkit-wide image types (common/image.h), as io's readers and writers hand them out.
using iris::Geometry;
using iris::Image;


struct PreprocessConfig {
  bool reorient = true;
  // Target spacing in mm (x, y, z); none keeps the input spacing.
  std::optional<std::array<double, 3>> spacing = std::array<double, 3>{1.5, 1.5, 1.5};
  // A coarser spacing for fast inference (iris-infer --fast), stored in the
  // model file with the rest; never used by training or iris-preprocess.
  std::optional<std::array<double, 3>> fast_spacing;
  Interpolation image_interpolation = Interpolation::kLinear;        // linear | bspline
  Interpolation label_interpolation = Interpolation::kNearest;       // nearest | per-label-linear
  std::string intensity = "zscore";  // a io::intensity_schemes() name
  bool crop_foreground = true;
  ForegroundOptions crop;  // percentile, optional absolute threshold, margin
  bool n4 = false;         // MR bias-field correction (slow; off by default)
  N4Options n4_options;

  // Keys (flat, as under "preprocess." in a YAML file): reorient, spacing
  // ("1.5", "[1, 1, 2.5]" or "none"), fast_spacing (likewise; each axis at
  // least spacing's), interpolation, label_interpolation,
  // intensity, crop_foreground, crop_percentile, crop_threshold (a number or
  // "none"), crop_margin_mm, n4, n4_shrink, n4_iterations ("[50, 50, 30]").
  // Unknown keys are an iris::Error suggesting the nearest known key.
  static PreprocessConfig from_config(const ConfigMap& map);
  ConfigMap to_config() const;  // every key; from_config(to_config()) == *this
  static std::vector<std::string> known_keys();
  void validate() const;
};

// A volume as the network sees it, plus everything needed to go back.
struct PreprocessedImage {
  at::Tensor voxels;  // [Z,Y,X]: float32 for images, int32 for labels
  Geometry geometry;  // grid of `voxels`

  // The inverse, step by step (source -> reoriented -> cropped -> geometry).
  std::string source;
  Geometry source_geometry;
  Reorientation reorientation;       // identity when reorient is off
  Geometry reoriented_geometry;      // source grid after reorientation
  CropBox crop;                      // in reoriented voxels; whole image when off
  Geometry cropped_geometry;         // the grid that resampling started from
  bool resampled = false;            // geometry differs from cropped_geometry
  PreprocessConfig config;
};

// Runs the pipeline on an image (float voxels). iris::Error for a bad config.
PreprocessedImage preprocess(const Image& image, const PreprocessConfig& config);

// The same spatial steps for a label map on the same grid as the reference's
// source (nearest or per-label-linear; no N4, no intensity scheme). Throws
// iris::Error naming both when the label grid differs from the source grid.
PreprocessedImage preprocess_labels(const Image& labels, const PreprocessedImage& reference);

// Takes labels [Z,Y,X] (is_label) or probabilities/intensities [Z,Y,X] or
// [C,Z,Y,X] on `preprocessed.geometry` back onto the source grid: resampled
// back (labels: config.label_interpolation; otherwise linear), padded with 0 outside the
// crop box, reorientation undone. The result's geometry is the source's.
Image invert_to_source(const at::Tensor& voxels, const PreprocessedImage& preprocessed, bool is_label);

}  // namespace iris::io
