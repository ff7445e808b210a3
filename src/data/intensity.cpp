#include "iris/data/intensity.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"

namespace iris::data {

at::Tensor zscore(const at::Tensor& volume) {
  at::Tensor v = volume.to(at::kFloat);
  const double mean = v.mean().item<double>();
  const double std = v.std().item<double>();
  return std > 1e-8 ? (v - mean) / std : at::zeros_like(v);
}

at::Tensor clip_percentile_zscore(const at::Tensor& volume, double lo, double hi) {
  at::Tensor v = volume.to(at::kFloat).reshape({-1});
  // Percentiles on a strided sample: exact enough for clipping and 50x faster
  // than sorting a 512x512x300 volume.
  const long stride = std::max<long>(1, v.numel() / 2000000);
  at::Tensor sample = std::get<0>(v.slice(0, 0, v.numel(), stride).sort());
  auto at_pct = [&](double p) {
    const long i = std::min<long>(sample.numel() - 1, static_cast<long>(p / 100.0 * (sample.numel() - 1) + 0.5));
    return sample[i].item<double>();
  };
  return zscore(volume.to(at::kFloat).clamp(at_pct(lo), at_pct(hi)));
}

at::Tensor clip_window_zscore(const at::Tensor& volume, double lo, double hi) {
  return zscore(volume.to(at::kFloat).clamp(lo, hi));
}

std::vector<std::string> intensity_schemes() { return {"none", "zscore", "mr", "ct", "ct-brain", "ct-abdomen"}; }

at::Tensor normalise_intensity(const at::Tensor& volume, const std::string& scheme) {
  if (scheme == "none") return volume.to(at::kFloat);
  if (scheme == "zscore") return zscore(volume);
  if (scheme == "mr") return clip_percentile_zscore(volume, 2.0, 98.0);
  if (scheme == "ct") return clip_window_zscore(volume, -990, 500);
  if (scheme == "ct-brain") return clip_window_zscore(volume, 0, 80);
  if (scheme == "ct-abdomen") return clip_window_zscore(volume, -160, 240);
  std::string known;
  for (const auto& s : intensity_schemes()) known += (known.empty() ? "" : ", ") + s;
  throw Error("--preprocess", "unknown intensity scheme '" + scheme + "' (known: " + known + ")");
}

}  // namespace iris::data
