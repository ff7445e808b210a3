#include "iris/io/intensity.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"

namespace iris::io {

at::Tensor zscore(const at::Tensor& volume) {
  at::Tensor v = volume.to(at::kFloat);
  const double mean = v.mean().item<double>();
  const double std = v.std().item<double>();
  return std > 1e-8 ? (v - mean) / std : at::zeros_like(v);
}

at::Tensor clip_percentile_zscore(const at::Tensor& volume, double lo, double hi) {
  at::Tensor v = volume.to(at::kFloat).reshape({-1});
  // Percentiles on a strided sample of at most ~2 M voxels: exact enough for
  // clipping, and far cheaper than sorting a whole CT volume.
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

WhiteStripe white_stripe(const at::Tensor& volume, const at::Tensor& brain, double width) {
  const at::Tensor v = volume.to(at::kFloat);
  const at::Tensor inside = brain.defined() ? brain.to(at::kBool) : v != 0;
  const at::Tensor values = v.masked_select(inside);
  if (values.numel() < 100) throw Error("mr-whitestripe", "needs a brain of at least 100 voxels");
  // Histogram between the 0.5 and 99.5 percentiles, smoothed (a Gaussian of
  // 1/100 of the range): the white-matter mode is its last local maximum
  // above a tenth of the highest one.
  const at::Tensor sorted = std::get<0>(values.sort());
  auto quantile = [&](double q) {
    const long i = std::min<long>(sorted.numel() - 1, std::max<long>(0, static_cast<long>(q * (sorted.numel() - 1))));
    return sorted[i].item<double>();
  };
  const double lo = quantile(0.005), hi = quantile(0.995);
  if (!(hi > lo)) throw Error("mr-whitestripe", "the brain has constant intensity");
  const long bins = 400;
  at::Tensor hist = at::histc(values.clamp(lo, hi), bins, lo, hi).to(at::kDouble);
  const at::Tensor r = at::arange(-12, 13, at::kDouble);
  const at::Tensor kernel = at::exp(-r.pow(2) / (2 * 4.0 * 4.0));
  hist = at::conv1d(hist.view({1, 1, -1}), (kernel / kernel.sum()).view({1, 1, -1}), {}, 1, 12).view({-1});
  const double top = hist.max().item<double>();
  long peak = -1;
  for (long b = bins - 2; b >= 1 && peak < 0; --b) {
    const double h = hist[b].item<double>();
    if (h >= 0.1 * top && h >= hist[b - 1].item<double>() && h >= hist[b + 1].item<double>()) peak = b;
  }
  if (peak < 0) peak = hist.argmax().item<long>();
  WhiteStripe s;
  s.mode = lo + (peak + 0.5) * (hi - lo) / bins;
  // The mode's quantile, and the stripe of quantiles +-width around it.
  const double q = (sorted <= s.mode).sum().item<double>() / static_cast<double>(sorted.numel());
  s.low = quantile(std::max(0.0, q - width));
  s.high = quantile(std::min(1.0, q + width));
  s.stripe = inside & (v >= s.low) & (v <= s.high);
  const at::Tensor stripe_values = v.masked_select(s.stripe);
  s.mean = stripe_values.mean().item<double>();
  s.std = stripe_values.std().item<double>();
  if (!(s.std > 0)) throw Error("mr-whitestripe", "the white-matter stripe has no spread");
  return s;
}

at::Tensor white_stripe_normalise(const at::Tensor& volume, const at::Tensor& brain) {
  const WhiteStripe s = white_stripe(volume, brain);
  return (volume.to(at::kFloat) - s.mean) / s.std;
}

std::vector<std::string> intensity_schemes() {
  return {"none", "zscore", "mr", "mr-whitestripe", "ct", "ct-brain", "ct-abdomen"};
}

at::Tensor normalise_intensity(const at::Tensor& volume, const std::string& scheme) {
  if (scheme == "none") return volume.to(at::kFloat);
  if (scheme == "zscore") return zscore(volume);
  if (scheme == "mr") return clip_percentile_zscore(volume, 2.0, 98.0);
  if (scheme == "mr-whitestripe") return white_stripe_normalise(volume);
  if (scheme == "ct") return clip_window_zscore(volume, -990, 500);
  if (scheme == "ct-brain") return clip_window_zscore(volume, 0, 80);
  if (scheme == "ct-abdomen") return clip_window_zscore(volume, -160, 240);
  std::string known;
  for (const auto& s : intensity_schemes()) known += (known.empty() ? "" : ", ") + s;
  throw Error("preprocess.intensity", "unknown intensity scheme '" + scheme + "' (known: " + known + ")");
}

}  // namespace iris::io
