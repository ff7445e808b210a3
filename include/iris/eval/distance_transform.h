#pragma once
// Exact Euclidean distance transform on a voxel grid with anisotropic spacing,
// and the surface-distance sets that the evaluation metrics are built from.
// Plain buffers (no ITK, no files) so the metrics can be tested in isolation.
#include <array>
#include <cstdint>
#include <vector>

namespace iris::eval {

// A binary volume indexed [z][y][x], x fastest (the layout of Image).
struct BinaryVolume {
  std::array<int64_t, 3> size_zyx{0, 0, 0};
  std::vector<uint8_t> voxels;  // 0 = background, anything else = foreground

  int64_t voxel_count() const { return size_zyx[0] * size_zyx[1] * size_zyx[2]; }
};

// Squared Euclidean distance in mm² from each voxel centre to the nearest
// feature voxel centre. Exact (separable Felzenszwalb–Huttenlocher lower
// envelope, one pass per axis). +inf everywhere when there is no feature voxel.
std::vector<float> squared_distance_to_features(const BinaryVolume& features,
                                                const std::array<double, 3>& spacing_zyx);

// Surface of a mask: foreground voxels with at least one of their 6 face
// neighbours in the background or outside the grid.
BinaryVolume surface_of(const BinaryVolume& mask);

// For every surface voxel of `prediction`, the distance (mm) to the nearest
// surface voxel of `reference`, and the other way round. Both empty when
// either mask is empty.
struct SurfaceDistances {
  std::vector<float> prediction_to_reference_mm;
  std::vector<float> reference_to_prediction_mm;
};
SurfaceDistances surface_distances(const BinaryVolume& reference, const BinaryVolume& prediction,
                                   const std::array<double, 3>& spacing_zyx);

}  // namespace iris::eval
