#pragma once
// Private to src/io: the interpolation behind resample_voxels. Nearest and
// linear are iris' own in both builds, so the ITK build and the build without
// ITK give the same voxels (they follow ITK's rules: a point is inside when
// its continuous index lies in [-0.5, size - 0.5), linear interpolation clamps
// neighbours to the image, outside points are 0). B-spline and N4 are ITK's
// (ITK build only).
#include <ATen/Tensor.h>

#include "iris/common/image.h"
#include "iris/io/resample.h"

namespace iris::io::detail {

// A contiguous [Z,Y,X] float32 tensor on grid `from`, resampled onto `onto`
// with a cubic B-spline: ITK's; the build without ITK refuses, naming
// preprocess.interpolation.
at::Tensor resample_bspline(const at::Tensor& voxels, const Geometry& from, const Geometry& onto);

#ifdef IRIS_HAVE_ITK
// ITK's resampler with any of nearest, linear and B-spline (ITK build only;
// its tests hold iris' own nearest and linear against it).
at::Tensor resample_with_itk(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                             Interpolation interpolation);
#endif

// iris' own nearest / linear on a contiguous [Z,Y,X] float32 or int32 tensor
// (every build).
at::Tensor resample_native(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation);

// The value at percentile `pct` (0..100) of a volume, from a strided sample.
double percentile_of(const at::Tensor& volume, double pct);

}  // namespace iris::io::detail
