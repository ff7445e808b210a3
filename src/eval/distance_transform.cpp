#include "iris/eval/distance_transform.h"

#include <cmath>
#include <limits>

#include <ATen/Parallel.h>

#include "iris/common/error.h"

namespace iris::eval {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Scratch for one 1-D pass; reused across the lines of one parallel chunk.
struct LineScratch {
  std::vector<double> values;     // f(q) for the line being transformed
  std::vector<int64_t> sites;     // parabola apexes in the lower envelope
  std::vector<double> boundaries; // left boundary (mm) of each envelope parabola
  void resize(int64_t n) {
    values.resize(n);
    sites.resize(n);
    boundaries.resize(n);
  }
};

// 1-D squared distance along one line: out(x) = min_q f(q) + ((x - q)·spacing)².
// Sites with f = inf never enter the envelope, so an empty line stays inf.
void transform_line(LineScratch& s, int64_t n, double spacing, float* out, int64_t stride) {
  int64_t k = -1;  // index of the rightmost parabola in the envelope
  for (int64_t q = 0; q < n; ++q) {
    const double fq = s.values[q];
    if (!std::isfinite(fq)) continue;
    const double qpos = q * spacing;
    double boundary = -kInfinity;
    while (k >= 0) {
      const int64_t p = s.sites[k];
      const double ppos = p * spacing;
      // Where parabola q overtakes parabola p.
      boundary = ((fq + qpos * qpos) - (s.values[p] + ppos * ppos)) / (2.0 * (qpos - ppos));
      if (boundary <= s.boundaries[k]) {
        --k;  // p is hidden under q and its predecessor
        boundary = -kInfinity;
      } else {
        break;
      }
    }
    ++k;
    s.sites[k] = q;
    s.boundaries[k] = boundary;
  }
  if (k < 0) {
    for (int64_t x = 0; x < n; ++x) out[x * stride] = std::numeric_limits<float>::infinity();
    return;
  }
  int64_t j = 0;
  for (int64_t x = 0; x < n; ++x) {
    const double xpos = x * spacing;
    while (j < k && s.boundaries[j + 1] < xpos) ++j;
    const double d = (x - s.sites[j]) * spacing;
    out[x * stride] = static_cast<float>(s.values[s.sites[j]] + d * d);
  }
}

// One pass along `axis` (0 = z, 1 = y, 2 = x) over the whole volume in place.
void pass_along_axis(std::vector<float>& field, const std::array<int64_t, 3>& size, int axis,
                     double spacing) {
  const int64_t nz = size[0], ny = size[1], nx = size[2];
  const int64_t n = size[axis];
  const int64_t stride = axis == 2 ? 1 : (axis == 1 ? nx : nx * ny);
  const int64_t line_count = field.size() / n;
  // Base offset of line l: the voxel where it starts.
  auto line_base = [&](int64_t l) -> int64_t {
    if (axis == 2) return l * nx;
    if (axis == 1) return (l / nx) * ny * nx + (l % nx);
    return l;  // axis z: lines start in the first slice
  };
  (void)nz;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n));
  at::parallel_for(0, line_count, grain, [&](int64_t begin, int64_t end) {
    LineScratch scratch;
    scratch.resize(n);
    for (int64_t l = begin; l < end; ++l) {
      float* line = field.data() + line_base(l);
      for (int64_t i = 0; i < n; ++i) scratch.values[i] = line[i * stride];
      transform_line(scratch, n, spacing, line, stride);
    }
  });
}

}  // namespace

std::vector<float> squared_distance_to_features(const BinaryVolume& features,
                                                const std::array<double, 3>& spacing_zyx) {
  if (static_cast<int64_t>(features.voxels.size()) != features.voxel_count())
    throw Error("squared_distance_to_features: voxel buffer does not match the size");
  std::vector<float> field(features.voxels.size());
  for (size_t i = 0; i < field.size(); ++i)
    field[i] = features.voxels[i] ? 0.0f : std::numeric_limits<float>::infinity();
  if (field.empty()) return field;
  // x first: its lines are contiguous, and most of the volume becomes finite early.
  pass_along_axis(field, features.size_zyx, 2, spacing_zyx[2]);
  pass_along_axis(field, features.size_zyx, 1, spacing_zyx[1]);
  pass_along_axis(field, features.size_zyx, 0, spacing_zyx[0]);
  return field;
}

BinaryVolume surface_of(const BinaryVolume& mask) {
  const int64_t nz = mask.size_zyx[0], ny = mask.size_zyx[1], nx = mask.size_zyx[2];
  BinaryVolume surface{mask.size_zyx, std::vector<uint8_t>(mask.voxels.size(), 0)};
  const uint8_t* m = mask.voxels.data();
  at::parallel_for(0, nz, 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < ny; ++y)
        for (int64_t x = 0; x < nx; ++x) {
          const int64_t i = (z * ny + y) * nx + x;
          if (!m[i]) continue;
          // Outside the grid counts as background.
          const bool on_surface = z == 0 || z == nz - 1 || y == 0 || y == ny - 1 || x == 0 ||
                                  x == nx - 1 || !m[i - 1] || !m[i + 1] || !m[i - nx] ||
                                  !m[i + nx] || !m[i - nx * ny] || !m[i + nx * ny];
          surface.voxels[i] = on_surface ? 1 : 0;
        }
  });
  return surface;
}

namespace {
// Distances (mm) of the voxels set in `from` to the features whose squared
// distance field is `field`.
std::vector<float> sample_distances(const BinaryVolume& from, const std::vector<float>& field) {
  std::vector<float> out;
  for (size_t i = 0; i < from.voxels.size(); ++i)
    if (from.voxels[i]) out.push_back(std::sqrt(field[i]));
  return out;
}
}  // namespace

SurfaceDistances surface_distances(const BinaryVolume& reference, const BinaryVolume& prediction,
                                   const std::array<double, 3>& spacing_zyx) {
  if (reference.size_zyx != prediction.size_zyx)
    throw Error("surface_distances: reference and prediction grids differ in size");
  SurfaceDistances result;
  const BinaryVolume reference_surface = surface_of(reference);
  const BinaryVolume prediction_surface = surface_of(prediction);
  auto any = [](const BinaryVolume& v) {
    for (uint8_t b : v.voxels)
      if (b) return true;
    return false;
  };
  if (!any(reference_surface) || !any(prediction_surface)) return result;
  result.prediction_to_reference_mm = sample_distances(
      prediction_surface, squared_distance_to_features(reference_surface, spacing_zyx));
  result.reference_to_prediction_mm = sample_distances(
      reference_surface, squared_distance_to_features(prediction_surface, spacing_zyx));
  return result;
}

}  // namespace iris::eval
