#include <cmath>
#include <sstream>

#include "iris/common/image.h"

namespace iris {

bool Geometry::same_grid(const Geometry& o, double tol) const {
  if (size != o.size) return false;
  for (int i = 0; i < 3; ++i) {
    if (std::abs(spacing[i] - o.spacing[i]) > tol) return false;
    if (std::abs(origin[i] - o.origin[i]) > tol) return false;
  }
  for (int i = 0; i < 9; ++i)
    if (std::abs(direction[i] - o.direction[i]) > tol) return false;
  return true;
}

std::string Geometry::describe() const {
  std::ostringstream s;
  s << size[0] << "x" << size[1] << "x" << size[2] << " voxels, spacing " << spacing[0] << "x"
    << spacing[1] << "x" << spacing[2] << " mm, origin (" << origin[0] << ", " << origin[1] << ", "
    << origin[2] << ")";
  // Direction only when it is not the identity, to keep the usual case short.
  const std::array<double, 9> identity{1, 0, 0, 0, 1, 0, 0, 0, 1};
  if (direction != identity) {
    s << ", direction (";
    for (int i = 0; i < 9; ++i) s << (i ? (i % 3 == 0 ? "; " : " ") : "") << direction[i];
    s << ")";
  }
  return s.str();
}

}  // namespace iris
