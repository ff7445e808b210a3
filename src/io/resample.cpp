#include "iris/io/resample.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "resample_detail.h"

namespace iris::io {

// ------------------------------------------------------------ reorientation

bool Reorientation::is_identity() const {
  return input_axis == std::array<int, 3>{0, 1, 2} && flipped == std::array<bool, 3>{false, false, false};
}

Reorientation canonical_reorientation(const Geometry& g) {
  auto d = [&](int row, int col) { return g.direction[3 * row + col]; };
  // Of the six axis permutations, the one whose axes line up best with LPS;
  // trying all of them (rather than per-axis argmax) stays a permutation even
  // for axes at 45 degrees.
  std::array<int, 3> perm{0, 1, 2}, best = perm;
  double best_score = -1;
  do {
    const double score = std::abs(d(0, perm[0])) + std::abs(d(1, perm[1])) + std::abs(d(2, perm[2]));
    if (score > best_score + 1e-12) best_score = score, best = perm;
  } while (std::next_permutation(perm.begin(), perm.end()));
  Reorientation r;
  r.input_axis = best;
  for (int i = 0; i < 3; ++i) r.flipped[i] = d(i, best[i]) < 0;
  return r;
}

Geometry reoriented_geometry(const Geometry& g, const Reorientation& r) {
  Geometry out = g;
  for (int i = 0; i < 3; ++i) {
    const int j = r.input_axis[i];
    out.size[i] = g.size[j];
    out.spacing[i] = g.spacing[j];
    const double sign = r.flipped[i] ? -1.0 : 1.0;
    for (int row = 0; row < 3; ++row) out.direction[3 * row + i] = sign * g.direction[3 * row + j];
    // A reversed axis starts at the input's last voxel along it.
    if (r.flipped[i])
      for (int row = 0; row < 3; ++row)
        out.origin[row] += g.direction[3 * row + j] * g.spacing[j] * double(g.size[j] - 1);
  }
  return out;
}

namespace {
// Tensor dim of spatial axis a (0 = x) for a tensor with `lead` leading dims.
int64_t dim_of_axis(int64_t lead, int axis) { return lead + 2 - axis; }

void check_spatial(const at::Tensor& t, const char* what) {
  if (!t.defined() || t.dim() < 3 || t.dim() > 4)
    throw Error(what, "expects a [Z,Y,X] or [C,Z,Y,X] tensor");
}
}  // namespace

at::Tensor reorient_voxels(const at::Tensor& voxels, const Reorientation& r) {
  check_spatial(voxels, "reorient_voxels");
  if (r.is_identity()) return voxels.contiguous();
  const int64_t lead = voxels.dim() - 3;
  std::vector<int64_t> order;
  for (int64_t k = 0; k < lead; ++k) order.push_back(k);
  for (int axis = 2; axis >= 0; --axis) order.push_back(dim_of_axis(lead, r.input_axis[axis]));
  std::vector<int64_t> flips;
  for (int axis = 0; axis < 3; ++axis)
    if (r.flipped[axis]) flips.push_back(dim_of_axis(lead, axis));
  at::Tensor out = voxels.permute(order);
  if (!flips.empty()) out = out.flip(flips);
  return out.contiguous();
}

at::Tensor undo_reorientation(const at::Tensor& voxels, const Reorientation& r) {
  check_spatial(voxels, "undo_reorientation");
  if (r.is_identity()) return voxels.contiguous();
  const int64_t lead = voxels.dim() - 3;
  std::vector<int64_t> flips;
  for (int axis = 0; axis < 3; ++axis)
    if (r.flipped[axis]) flips.push_back(dim_of_axis(lead, axis));
  at::Tensor t = flips.empty() ? voxels : voxels.flip(flips);
  std::vector<int64_t> order(voxels.dim());
  for (int64_t k = 0; k < lead; ++k) order[k] = k;
  // Input dim of axis input_axis[i] comes from reoriented dim of axis i.
  for (int i = 0; i < 3; ++i) order[dim_of_axis(lead, r.input_axis[i])] = dim_of_axis(lead, i);
  return t.permute(order).contiguous();
}

// ------------------------------------------------------------ cropping

bool CropBox::covers_whole(const Geometry& g) const {
  for (int i = 0; i < 3; ++i)
    if (begin[i] != 0 || end[i] != g.size[i]) return false;
  return true;
}

namespace detail {
double percentile_of(const at::Tensor& volume, double pct) {
  at::Tensor v = volume.reshape({-1});
  // A strided sample is plenty for a threshold and avoids sorting 80 M voxels.
  const int64_t stride = std::max<int64_t>(1, v.numel() / 2000000);
  at::Tensor sample = std::get<0>(v.slice(0, 0, v.numel(), stride).sort());
  const int64_t i = std::min<int64_t>(sample.numel() - 1,
                                      static_cast<int64_t>(pct / 100.0 * double(sample.numel() - 1) + 0.5));
  return sample[i].item<double>();
}
}  // namespace detail

namespace {
// First and one-past-last index where a 1-D bool tensor is true (or {0,0}).
std::pair<long, long> true_span(const at::Tensor& flags) {
  at::Tensor idx = flags.nonzero();
  if (idx.numel() == 0) return {0, 0};
  return {idx.min().item<long>(), idx.max().item<long>() + 1};
}
}  // namespace

CropBox foreground_box(const at::Tensor& volume, const Geometry& g, const ForegroundOptions& o) {
  if (volume.dim() != 3) internal_error("foreground_box", "expects a [Z,Y,X] volume");
  CropBox whole;
  whole.end = g.size;
  if (volume.numel() == 0) return whole;
  at::Tensor v = volume.to(at::kFloat);
  const double threshold = o.use_threshold ? o.threshold : detail::percentile_of(v, o.percentile);
  const at::Tensor mask = v > threshold;
  // Reduce to one profile per axis: [Z,Y,X] -> x: any over (z, y), etc.
  const at::Tensor along_z = mask.any(2).any(1);
  if (!along_z.any().item<bool>()) return whole;
  const at::Tensor along_y = mask.any(2).any(0);
  const at::Tensor along_x = mask.any(1).any(0);
  const std::array<at::Tensor, 3> profiles{along_x, along_y, along_z};
  CropBox box;
  for (int i = 0; i < 3; ++i) {
    const auto span = true_span(profiles[i]);
    const long margin = static_cast<long>(std::ceil(o.margin_mm / g.spacing[i] - 1e-9));
    box.begin[i] = std::max<long>(0, span.first - margin);
    box.end[i] = std::min<long>(g.size[i], span.second + margin);
  }
  return box;
}

Geometry cropped_geometry(const Geometry& g, const CropBox& box) {
  Geometry out = g;
  for (int i = 0; i < 3; ++i) out.size[i] = box.end[i] - box.begin[i];
  for (int row = 0; row < 3; ++row)
    for (int j = 0; j < 3; ++j)
      out.origin[row] += g.direction[3 * row + j] * g.spacing[j] * double(box.begin[j]);
  return out;
}

at::Tensor crop_voxels(const at::Tensor& voxels, const CropBox& box) {
  check_spatial(voxels, "crop_voxels");
  const int64_t lead = voxels.dim() - 3;
  at::Tensor t = voxels;
  for (int axis = 0; axis < 3; ++axis)
    t = t.narrow(dim_of_axis(lead, axis), box.begin[axis], box.end[axis] - box.begin[axis]);
  return t.contiguous();
}

at::Tensor pad_back(const at::Tensor& cropped, const CropBox& box, const Geometry& full, double fill) {
  check_spatial(cropped, "pad_back");
  const int64_t lead = cropped.dim() - 3;
  std::vector<int64_t> shape(cropped.sizes().begin(), cropped.sizes().begin() + lead);
  for (int axis = 2; axis >= 0; --axis) shape.push_back(full.size[axis]);
  for (int axis = 0; axis < 3; ++axis)
    if (cropped.size(dim_of_axis(lead, axis)) != box.end[axis] - box.begin[axis])
      internal_error("pad_back", "tensor does not have the crop box's size");
  at::Tensor out = at::full(shape, fill, cropped.options());
  at::Tensor window = out;
  for (int axis = 0; axis < 3; ++axis)
    window = window.narrow(dim_of_axis(lead, axis), box.begin[axis], box.end[axis] - box.begin[axis]);
  window.copy_(cropped);
  return out;
}

// ------------------------------------------------------------ resampling

Interpolation parse_interpolation(const std::string& name, const std::string& where) {
  if (name == "nearest") return Interpolation::kNearest;
  if (name == "linear") return Interpolation::kLinear;
  if (name == "bspline") return Interpolation::kBSpline;
  if (name == "per-label-linear") return Interpolation::kPerLabelLinear;
  throw Error(where, "unknown interpolation '" + name + "' (known: nearest, linear, bspline, per-label-linear)");
}

std::string interpolation_name(Interpolation i) {
  switch (i) {
    case Interpolation::kNearest: return "nearest";
    case Interpolation::kLinear: return "linear";
    case Interpolation::kBSpline: return "bspline";
    case Interpolation::kPerLabelLinear: return "per-label-linear";
  }
  return "?";
}

Geometry grid_with_spacing(const Geometry& g, const std::array<double, 3>& target) {
  Geometry out = g;
  for (int i = 0; i < 3; ++i) {
    if (!(target[i] > 0)) throw Error("spacing", "target spacing must be positive");
    const double extent = double(g.size[i]) * g.spacing[i];
    out.size[i] = std::max<long>(1, std::lround(extent / target[i]));
    out.spacing[i] = target[i];
  }
  // The first outer voxel face stays put: centre moves by (new - old) / 2.
  out.origin = g.origin;
  for (int row = 0; row < 3; ++row)
    for (int j = 0; j < 3; ++j)
      out.origin[row] += g.direction[3 * row + j] * 0.5 * (target[j] - g.spacing[j]);
  return out;
}

namespace {

// One 3-D float32 or int32 volume. Nearest and linear are iris' own in both
// builds, so that they segment a NIfTI file alike; B-spline is ITK's
// (resample_itk.cpp), refused without ITK (resample_noitk.cpp).
at::Tensor resample_one(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                        Interpolation interpolation) {
  if (interpolation == Interpolation::kBSpline) return detail::resample_bspline(voxels.contiguous(), from, onto);
  return detail::resample_native(voxels.contiguous(), from, onto, interpolation);
}

// Each label's mask is interpolated linearly and the most covered label wins:
// smoother label boundaries than nearest neighbour when downsampling.
at::Tensor resample_per_label(const at::Tensor& labels, const Geometry& from, const Geometry& onto) {
  const at::Tensor values = std::get<0>(at::_unique(labels.reshape({-1}), /*sorted=*/true));
  at::Tensor best_score = resample_one((labels == 0).to(at::kFloat), from, onto, Interpolation::kLinear);
  at::Tensor best_label = at::zeros(best_score.sizes(), at::kInt);
  for (int64_t k = 0; k < values.numel(); ++k) {
    const int value = values[k].item<int>();
    if (value == 0) continue;
    at::Tensor score = resample_one((labels == value).to(at::kFloat), from, onto, Interpolation::kLinear);
    const at::Tensor wins = score > best_score;
    best_label.masked_fill_(wins, value);
    best_score = at::where(wins, score, best_score);
  }
  return best_label;
}

at::Tensor resample_3d(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                       Interpolation interpolation) {
  const bool integral = !at::isFloatingType(voxels.scalar_type());
  if (integral) {
    const at::Tensor labels = voxels.to(at::kInt);
    if (interpolation == Interpolation::kPerLabelLinear) return resample_per_label(labels, from, onto);
    if (interpolation != Interpolation::kNearest)
      internal_error("resample_voxels", "integer (label) voxels need nearest or per-label-linear interpolation");
    return resample_one(labels, from, onto, interpolation);
  }
  if (interpolation == Interpolation::kPerLabelLinear)
    internal_error("resample_voxels", "per-label-linear needs integer label voxels");
  return resample_one(voxels.to(at::kFloat), from, onto, interpolation);
}

}  // namespace

at::Tensor resample_voxels(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                           Interpolation interpolation) {
  check_spatial(voxels, "resample_voxels");
  if (voxels.size(-1) != from.size[0] || voxels.size(-2) != from.size[1] || voxels.size(-3) != from.size[2])
    internal_error("resample_voxels", "tensor shape " + c10::str(voxels.sizes()) +
                                       " does not match the grid " + from.describe());
  if (voxels.dim() == 3) return resample_3d(voxels, from, onto, interpolation);
  std::vector<at::Tensor> channels;
  for (int64_t c = 0; c < voxels.size(0); ++c) channels.push_back(resample_3d(voxels[c], from, onto, interpolation));
  return at::stack(channels);
}

}  // namespace iris::io
