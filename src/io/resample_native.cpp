#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "resample_detail.h"

namespace iris::io::detail {

at::Tensor resample_native(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation) {
  if (interpolation != Interpolation::kNearest && interpolation != Interpolation::kLinear)
    internal_error("resample_voxels", interpolation_name(interpolation) + " is not one of iris' own interpolations");
  const bool integral = voxels.scalar_type() == at::kInt;
  if (integral && interpolation != Interpolation::kNearest)
    internal_error("resample_voxels", "integer (label) voxels need nearest interpolation");
  // Continuous index in `from` of output index (x, y, z): c = A (x, y, z) + b,
  // A = S_from^-1 D_from^T D_onto S_onto, b = S_from^-1 D_from^T (o_onto - o_from).
  double A[3][3], b[3];
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      double v = 0;
      for (int r = 0; r < 3; ++r) v += from.direction[3 * r + i] * onto.direction[3 * r + j];
      A[i][j] = v * onto.spacing[j] / from.spacing[i];
    }
    double v = 0;
    for (int r = 0; r < 3; ++r) v += from.direction[3 * r + i] * (onto.origin[r] - from.origin[r]);
    b[i] = v / from.spacing[i];
  }
  const long nx = onto.size[0], ny = onto.size[1], nz = onto.size[2];
  const long sx = from.size[0], sy = from.size[1], sz = from.size[2];
  // The source stays in its own type: only the gathered values become
  // double, so a large volume is not copied whole.
  const at::Tensor source = voxels.contiguous().reshape({-1});
  at::Tensor out = at::zeros({nz, ny, nx}, voxels.options());
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor xs = at::arange(nx, f64).view({1, 1, nx});
  const at::Tensor ys = at::arange(ny, f64).view({1, ny, 1});
  // A few million output voxels at a time keep the index tensors small.
  const long per_chunk = std::max<long>(1, 2000000 / std::max<long>(1, nx * ny));
  for (long z0 = 0; z0 < nz; z0 += per_chunk) {
    const long n = std::min(per_chunk, nz - z0);
    const at::Tensor zs = at::arange(z0, z0 + n, f64).view({n, 1, 1});
    at::Tensor c[3];
    for (int i = 0; i < 3; ++i) c[i] = (xs * A[i][0] + ys * A[i][1]) + (zs * A[i][2] + b[i]);
    const long size[3] = {sx, sy, sz};
    at::Tensor inside = at::ones({n, ny, nx}, at::kBool);
    for (int i = 0; i < 3; ++i) inside = inside & (c[i] >= -0.5) & (c[i] < static_cast<double>(size[i]) - 0.5);
    at::Tensor value;
    if (interpolation == Interpolation::kNearest) {
      at::Tensor idx[3];
      for (int i = 0; i < 3; ++i) idx[i] = at::floor(c[i] + 0.5).clamp(0, static_cast<double>(size[i] - 1)).to(at::kLong);
      value = source.index_select(0, ((idx[2] * sy + idx[1]) * sx + idx[0]).reshape({-1})).view({n, ny, nx});
    } else {
      at::Tensor lo[3], hi[3], t[3];
      for (int i = 0; i < 3; ++i) {
        const at::Tensor f = at::floor(c[i]);
        t[i] = c[i] - f;
        lo[i] = f.clamp(0, static_cast<double>(size[i] - 1)).to(at::kLong);
        hi[i] = (f + 1).clamp(0, static_cast<double>(size[i] - 1)).to(at::kLong);
      }
      value = at::zeros({n, ny, nx}, f64);
      for (int corner = 0; corner < 8; ++corner) {
        const at::Tensor& ix = corner & 1 ? hi[0] : lo[0];
        const at::Tensor& iy = corner & 2 ? hi[1] : lo[1];
        const at::Tensor& iz = corner & 4 ? hi[2] : lo[2];
        const at::Tensor w = (corner & 1 ? t[0] : 1 - t[0]) * (corner & 2 ? t[1] : 1 - t[1]) * (corner & 4 ? t[2] : 1 - t[2]);
        value += w * source.index_select(0, ((iz * sy + iy) * sx + ix).reshape({-1})).view({n, ny, nx}).to(at::kDouble);
      }
    }
    out.narrow(0, z0, n).copy_(at::where(inside, value, at::zeros_like(value)).to(voxels.scalar_type()));
  }
  return out;
}

}  // namespace iris::io::detail
