// B-spline resampling and N4 without ITK: both need the ITK build and say so.
#include "iris/common/error.h"
#include "resample_detail.h"

namespace iris::io {

namespace detail {

at::Tensor resample_bspline(const at::Tensor&, const Geometry&, const Geometry&) {
  throw Error("preprocess.interpolation", "bspline needs the ITK build of iris; use linear");
}

}  // namespace detail

at::Tensor n4_bias_correct(const at::Tensor&, const Geometry&, const N4Options&) {
  throw Error("preprocess.n4", "N4 bias-field correction needs the ITK build of iris (set n4: false, or preprocess "
                               "the data with the ITK build)");
}

}  // namespace iris::io
