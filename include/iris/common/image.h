#pragma once
// The one in-memory image type of iris, used by every area: voxels as a
// torch tensor plus the physical geometry (LPS, as ITK). The tensor is indexed [z][y][x] (x fastest,
// the order of the voxels on disk), optionally with a leading component axis.
#include <array>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris {

struct Geometry {
  std::array<long, 3> size{0, 0, 0};          // x, y, z voxel counts
  std::array<double, 3> spacing{1, 1, 1};     // mm, x y z
  std::array<double, 3> origin{0, 0, 0};      // mm, LPS
  std::array<double, 9> direction{1, 0, 0, 0, 1, 0, 0, 0, 1};  // row-major, columns = axes

  // Same grid within `tol` (mm for spacing/origin, absolute for direction).
  bool same_grid(const Geometry& other, double tol = 1e-4) const;
  std::string describe() const;  // "128x128x64 @ 1.5x1.5x3 mm, origin (...)"
};

struct Image {
  at::Tensor voxels;  // [Z, Y, X] (or [C, Z, Y, X] for vector images), CPU
  Geometry geometry;
  std::string source;  // file or folder it came from ("" when made in memory)
  // Things worth telling the user that did not stop the read (e.g. uneven
  // DICOM slice spacing); empty for most images.
  std::vector<std::string> warnings;
};

}  // namespace iris
