#pragma once
// Private to src/io: the interpolation behind resample_voxels, shared by the
// ITK build (ITK's resampler, B-spline and N4) and the build without ITK
// (iris' own nearest and linear, which follow ITK's rules: a point is inside
// when its continuous index lies in [-0.5, size - 0.5), linear interpolation
// clamps neighbours to the image, outside points are 0).
#include <ATen/Tensor.h>

#include "iris/common/image.h"
#include "iris/io/resample.h"

namespace iris::io::detail {

// A contiguous [Z,Y,X] float32 or int32 tensor on grid `from`, resampled onto `onto`.
at::Tensor resample_scalar(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation);

// iris' own nearest / linear (every build; the ITK build tests it against ITK).
at::Tensor resample_native(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation);

// The value at percentile `pct` (0..100) of a volume, from a strided sample.
double percentile_of(const at::Tensor& volume, double pct);

}  // namespace iris::io::detail
