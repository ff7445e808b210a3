#pragma once
// Intensity normalisation steps (no ITK: usable in the GPU-only build).
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris::io {

// Clip to [lo, hi] percentiles (0..100) of the voxels, then z-score.
at::Tensor clip_percentile_zscore(const at::Tensor& volume, double lo = 2.0, double hi = 98.0);
// Clip to a fixed window (CT HU presets), then z-score.
at::Tensor clip_window_zscore(const at::Tensor& volume, double lo, double hi);
// Per-volume z-score (mean 0, std 1; a constant volume becomes all zeros).
at::Tensor zscore(const at::Tensor& volume);

// White-stripe normalisation of a T1-weighted brain MR (Shinohara et al.,
// NeuroImage Clin 2014): the white-matter mode of the histogram inside the
// brain (the brightest peak of the smoothed histogram), the "stripe" of
// voxels whose quantile lies within +-`width` of that mode's quantile, and
// the volume z-scored by the stripe's mean and standard deviation, so white
// matter has the same scale in every scan.
struct WhiteStripe {
  double mode = 0;            // intensity of the white-matter peak
  double low = 0, high = 0;   // the stripe's intensity range
  double mean = 0, std = 1;   // of the stripe's voxels
  at::Tensor stripe;          // bool [Z, Y, X]: the stripe's voxels
};
// `brain`: the voxels to take the histogram of (bool); undefined = the
// non-zero voxels (a skull-stripped image).
WhiteStripe white_stripe(const at::Tensor& volume, const at::Tensor& brain = {}, double width = 0.05);
at::Tensor white_stripe_normalise(const at::Tensor& volume, const at::Tensor& brain = {});

// Applies a named scheme: "none", "zscore", "mr" (2/98 percentile clip +
// z-score), "mr-whitestripe" (white_stripe_normalise over the non-zero
// voxels: for skull-stripped T1), "ct" ([-990, 500] HU), "ct-brain"
// ([0, 80]), "ct-abdomen" ([-160, 240]). iris::Error for unknown names.
at::Tensor normalise_intensity(const at::Tensor& volume, const std::string& scheme);
std::vector<std::string> intensity_schemes();

}  // namespace iris::io
