#pragma once
// Intensity normalisation steps (no ITK: usable in the GPU-only build).
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris::data {

// Clip to [lo, hi] percentiles (0..100) of the voxels, then z-score.
at::Tensor clip_percentile_zscore(const at::Tensor& volume, double lo = 2.0, double hi = 98.0);
// Clip to a fixed window (CT HU presets), then z-score.
at::Tensor clip_window_zscore(const at::Tensor& volume, double lo, double hi);
// Per-volume z-score (mean 0, std 1; a constant volume becomes all zeros).
at::Tensor zscore(const at::Tensor& volume);

// Applies a named scheme: "none", "zscore", "mr" (2/98 percentile clip +
// z-score), "ct" ([-990, 500] HU), "ct-brain" ([0, 80]), "ct-abdomen"
// ([-160, 240]). iris::Error for unknown names.
at::Tensor normalise_intensity(const at::Tensor& volume, const std::string& scheme);
std::vector<std::string> intensity_schemes();

}  // namespace iris::data
