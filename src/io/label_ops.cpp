#include "iris/io/label_ops.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"

namespace iris::io {

Image label_image_like(const Image& like, const at::Tensor& voxels) {
  Image out;
  out.geometry = like.geometry;
  out.voxels = narrow_labels(voxels);
  return out;
}

at::Tensor apply_label_mapping(const at::Tensor& labels, const std::vector<LabelMapping>& mappings, long otherwise) {
  at::Tensor out = otherwise < 0 ? labels.to(at::kLong).clone() : at::full_like(labels, otherwise, at::kLong);
  for (const auto& m : mappings) out.masked_fill_(labels.ge(m.low) & labels.le(m.high), m.value);
  return out;
}

double otsu_threshold(const at::Tensor& volume, const std::string& where) {
  at::Tensor v = volume.to(at::kDouble).reshape({-1});
  if (v.numel() == 0) throw Error(where, "the image is empty");
  const double lo = v.min().item<double>(), hi = v.max().item<double>();
  if (!(hi > lo)) throw Error(where, "the image is constant (or not finite), so it has no Otsu threshold");
  at::Tensor hist = at::histc(v, 256, lo, hi);
  at::Tensor p = hist / hist.sum();
  at::Tensor centres = lo + (at::arange(256, at::kDouble) + 0.5) * (hi - lo) / 256;
  at::Tensor w0 = p.cumsum(0), mu0 = (p * centres).cumsum(0);
  const double mu = mu0[-1].item<double>();
  at::Tensor between = (mu * w0 - mu0).pow(2) / (w0 * (1 - w0)).clamp_min(1e-12);
  const long best = between.argmax().item<long>();
  // The threshold lies between the best bin and the next one.
  return centres[best].item<double>() + 0.5 * (hi - lo) / 256;
}

at::Tensor inpaint_in_slices(const at::Tensor& input, const at::Tensor& input_mask) {
  at::Tensor voxels = input.to(at::kFloat).clone();
  at::Tensor mask = input_mask.to(at::kBool).clone();
  const at::Tensor kernel = at::ones({1, 1, 3, 3});
  for (int pass = 0; pass < 1000 && mask.any().item<bool>(); ++pass) {
    const at::Tensor known = (~mask).to(at::kFloat);
    const at::Tensor sum = at::conv2d((voxels * known).unsqueeze(1), kernel, {}, 1, 1).squeeze(1);
    const at::Tensor count = at::conv2d(known.unsqueeze(1), kernel, {}, 1, 1).squeeze(1);
    const at::Tensor ready = mask & (count > 0);
    if (!ready.any().item<bool>()) break;  // a slice masked completely stays as it was
    voxels = at::where(ready, sum / count.clamp_min(1), voxels);
    mask = mask & ~ready;
  }
  return voxels;
}

}  // namespace iris::io
