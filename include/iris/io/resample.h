#pragma once
// Spatial preprocessing steps, each with an exact inverse: reorientation to
// the canonical (LPS-aligned) frame, foreground crop, resampling to a target
// spacing, and optional N4 bias-field correction. Nearest and linear
// interpolation are iris' own in every build; B-spline and N4 are ITK's (ITK
// build only). Callers only see tensors and Geometry.
//
// Tensors are [Z,Y,X] or [C,Z,Y,X] as in image.h; Geometry axes are x, y, z.
#include <array>
#include <string>

#include <ATen/Tensor.h>

#include "iris/common/image.h"

namespace iris::io {

// The toolkit-wide image types (common/image.h), as io's readers and writers hand them out.
using iris::Geometry;
using iris::Image;


// ------------------------------------------------------------ reorientation

// Output axis i (x, y, z) is input axis `input_axis[i]`, reversed when
// `flipped[i]`. Pure index shuffling: voxel values are moved, never mixed.
struct Reorientation {
  std::array<int, 3> input_axis{0, 1, 2};
  std::array<bool, 3> flipped{false, false, false};
  bool is_identity() const;
};

// The permutation/flip that brings each image axis onto the LPS axis it is
// closest to, running in the positive direction (ITK's "RAI" code). For an
// axis-aligned image the result has the identity direction exactly; an
// oblique image keeps its small obliquity (nothing is interpolated here).
Reorientation canonical_reorientation(const Geometry& geometry);

// The grid of `geometry` after `r`: same physical voxel centres.
Geometry reoriented_geometry(const Geometry& geometry, const Reorientation& r);
// Moves the voxels of a [..., Z, Y, X] tensor by `r` (contiguous result).
at::Tensor reorient_voxels(const at::Tensor& voxels, const Reorientation& r);
// The exact inverse of reorient_voxels.
at::Tensor undo_reorientation(const at::Tensor& voxels, const Reorientation& r);

// ------------------------------------------------------------ cropping

// A box of voxel indices, [begin, end) per axis x, y, z.
struct CropBox {
  std::array<long, 3> begin{0, 0, 0};
  std::array<long, 3> end{0, 0, 0};
  std::array<long, 3> size() const { return {end[0] - begin[0], end[1] - begin[1], end[2] - begin[2]}; }
  bool covers_whole(const Geometry& g) const;
};

struct ForegroundOptions {
  // Foreground = voxels above `threshold` when set (e.g. -500 HU for a CT
  // body), otherwise above the value at `percentile` (0..100) of the volume:
  // with the default 1 this is "non-zero" for MR with zero background.
  double percentile = 1.0;
  bool use_threshold = false;
  double threshold = 0.0;
  double margin_mm = 10.0;  // grown on every side, clipped to the image
};

// Bounding box of the foreground of a [Z,Y,X] volume plus the margin. The
// whole image when no voxel is foreground (nothing to crop on).
CropBox foreground_box(const at::Tensor& volume, const Geometry& geometry,
                       const ForegroundOptions& options = {});
Geometry cropped_geometry(const Geometry& geometry, const CropBox& box);
at::Tensor crop_voxels(const at::Tensor& voxels, const CropBox& box);  // [..., Z, Y, X]
// Places `cropped` back into a zero tensor of `full`'s size: the inverse of
// crop_voxels on the box, `fill` elsewhere.
at::Tensor pad_back(const at::Tensor& cropped, const CropBox& box, const Geometry& full,
                    double fill = 0.0);

// ------------------------------------------------------------ resampling

enum class Interpolation {
  kNearest,          // labels
  kLinear,           // images, probabilities
  kBSpline,          // images (cubic; may overshoot at sharp edges)
  kPerLabelLinear,   // labels: each label's mask linearly, then argmax
};
Interpolation parse_interpolation(const std::string& name, const std::string& where);
std::string interpolation_name(Interpolation interpolation);

// The grid covering the same physical box as `geometry` (outer voxel faces
// aligned at the first corner) with spacing `target_spacing`: size =
// round(size * spacing / target), at least 1; direction unchanged.
Geometry grid_with_spacing(const Geometry& geometry, const std::array<double, 3>& target_spacing);

// Resamples a [Z,Y,X] or [C,Z,Y,X] tensor from grid `from` onto grid `onto`
// (same physical space). Points outside `from` get 0. Labels (integer dtype)
// need kNearest or kPerLabelLinear and stay int32; images become float32.
at::Tensor resample_voxels(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation);

// ------------------------------------------------------------ N4

struct N4Options {
  int shrink_factor = 4;                       // N4 runs on a shrunk copy (speed)
  std::array<int, 3> iterations{50, 50, 30};  // per fitting level
  double mask_percentile = 1.0;               // fit only where voxel > this percentile
};

// N4 bias-field correction of a (non-negative, MR) [Z,Y,X] volume. The field
// is fitted on the shrunk image and evaluated on the full grid, so the output
// has the input's grid. Negative voxels are clamped to 0 first (N4 works in
// the log domain).
at::Tensor n4_bias_correct(const at::Tensor& volume, const Geometry& geometry,
                           const N4Options& options = {});

}  // namespace iris::io
