#include "iris/eval/label_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "iris/common/error.h"
#include "iris/eval/distance_transform.h"

namespace iris::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Label values are counted in dense tables indexed by value; a wider range
// means the map is not a label map (e.g. an intensity image passed by mistake).
constexpr int64_t kMaxLabelRange = int64_t{1} << 22;

double ratio_or_nan(double numerator, double denominator) {
  return denominator > 0 ? numerator / denominator : kNaN;
}

// Per-value voxel counts and the bounding box of ref ∪ pred for each value.
struct LabelCensus {
  int32_t min_value = 0;
  std::vector<int64_t> reference_count, prediction_count, agreement_count;
  std::vector<std::array<int64_t, 6>> box;  // zmin, ymin, xmin, zmax, ymax, xmax

  explicit LabelCensus(int32_t min_v = 0, int64_t range = 0)
      : min_value(min_v),
        reference_count(range, 0),
        prediction_count(range, 0),
        agreement_count(range, 0),
        box(range, {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max(),
                    std::numeric_limits<int64_t>::max(), -1, -1, -1}) {}

  void grow_box(int64_t v, int64_t z, int64_t y, int64_t x) {
    auto& b = box[v];
    b[0] = std::min(b[0], z); b[1] = std::min(b[1], y); b[2] = std::min(b[2], x);
    b[3] = std::max(b[3], z); b[4] = std::max(b[4], y); b[5] = std::max(b[5], x);
  }
  void merge(const LabelCensus& o) {
    for (size_t v = 0; v < box.size(); ++v) {
      reference_count[v] += o.reference_count[v];
      prediction_count[v] += o.prediction_count[v];
      agreement_count[v] += o.agreement_count[v];
      for (int i = 0; i < 3; ++i) box[v][i] = std::min(box[v][i], o.box[v][i]);
      for (int i = 3; i < 6; ++i) box[v][i] = std::max(box[v][i], o.box[v][i]);
    }
  }
};

LabelCensus take_census(const int32_t* ref, const int32_t* pred, int64_t nz, int64_t ny,
                        int64_t nx, int32_t min_value, int64_t range) {
  // One partial census per slab of slices, merged afterwards (no atomics).
  const int64_t slabs = std::max<int64_t>(1, std::min<int64_t>(nz, at::get_num_threads()));
  std::vector<LabelCensus> partial(slabs, LabelCensus(min_value, range));
  at::parallel_for(0, slabs, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      LabelCensus& c = partial[s];
      const int64_t z_begin = nz * s / slabs, z_end = nz * (s + 1) / slabs;
      for (int64_t z = z_begin; z < z_end; ++z)
        for (int64_t y = 0; y < ny; ++y) {
          const int64_t row = (z * ny + y) * nx;
          for (int64_t x = 0; x < nx; ++x) {
            const int64_t r = ref[row + x] - min_value, p = pred[row + x] - min_value;
            ++c.reference_count[r];
            ++c.prediction_count[p];
            if (r == p) {
              ++c.agreement_count[r];
              c.grow_box(r, z, y, x);
            } else {
              c.grow_box(r, z, y, x);
              c.grow_box(p, z, y, x);
            }
          }
        }
    }
  });
  for (int64_t s = 1; s < slabs; ++s) partial[0].merge(partial[s]);
  return std::move(partial[0]);
}

// Surface distances of one label inside its crop, plus where the worst one is.
void fill_surface_metrics(LabelMetrics& m, const int32_t* ref, const int32_t* pred,
                          const std::array<int64_t, 3>& size, const std::array<int64_t, 6>& box,
                          const std::array<double, 3>& spacing_zyx, double tolerance_mm) {
  // One voxel of margin so that crop borders are background, as the rest of
  // the image is; at the image border the grid edge plays that role.
  std::array<int64_t, 3> lo, hi, crop;
  for (int a = 0; a < 3; ++a) {
    lo[a] = std::max<int64_t>(0, box[a] - 1);
    hi[a] = std::min<int64_t>(size[a] - 1, box[a + 3] + 1);
    crop[a] = hi[a] - lo[a] + 1;
  }
  BinaryVolume ref_mask{crop, std::vector<uint8_t>(crop[0] * crop[1] * crop[2])};
  BinaryVolume pred_mask{crop, std::vector<uint8_t>(ref_mask.voxels.size())};
  at::parallel_for(0, crop[0], 1, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < crop[1]; ++y) {
        const int64_t src = ((z + lo[0]) * size[1] + (y + lo[1])) * size[2] + lo[2];
        const int64_t dst = (z * crop[1] + y) * crop[2];
        for (int64_t x = 0; x < crop[2]; ++x) {
          ref_mask.voxels[dst + x] = ref[src + x] == m.label;
          pred_mask.voxels[dst + x] = pred[src + x] == m.label;
        }
      }
  });
  // Crop edges that are not image edges must not count as surface: the
  // margin guarantees the label is absent there, so surface_of is exact.
  const BinaryVolume ref_surface = surface_of(ref_mask);
  const BinaryVolume pred_surface = surface_of(pred_mask);
  const std::vector<float> to_ref = squared_distance_to_features(ref_surface, spacing_zyx);
  const std::vector<float> to_pred = squared_distance_to_features(pred_surface, spacing_zyx);

  std::vector<float> pooled;
  double sum = 0;
  int64_t within_tolerance = 0;
  float worst = -1;
  int64_t worst_index = -1;
  auto collect = [&](const BinaryVolume& from, const std::vector<float>& field) {
    for (size_t i = 0; i < from.voxels.size(); ++i) {
      if (!from.voxels[i]) continue;
      const float d = std::sqrt(field[i]);
      pooled.push_back(d);
      sum += d;
      if (d <= tolerance_mm) ++within_tolerance;
      if (d > worst) {
        worst = d;
        worst_index = static_cast<int64_t>(i);
      }
    }
  };
  collect(pred_surface, to_ref);
  collect(ref_surface, to_pred);
  const double count = static_cast<double>(pooled.size());
  m.hausdorff_max_mm = worst;
  m.average_surface_distance_mm = sum / count;
  m.normalized_surface_dice = within_tolerance / count;
  m.hausdorff_95_mm = percentile(pooled, 95.0);
  if (worst > 0) {
    const int64_t z = worst_index / (crop[1] * crop[2]);
    const int64_t y = (worst_index / crop[2]) % crop[1];
    const int64_t x = worst_index % crop[2];
    m.worst_error_zyx = {z + lo[0], y + lo[1], x + lo[2]};
  }
}

}  // namespace

double percentile(std::vector<float>& values, double percent) {
  if (values.empty()) return kNaN;
  const double position = (values.size() - 1) * percent / 100.0;
  const size_t below = static_cast<size_t>(std::floor(position));
  std::nth_element(values.begin(), values.begin() + below, values.end());
  const double low = values[below];
  if (below + 1 >= values.size()) return low;
  const double high = *std::min_element(values.begin() + below + 1, values.end());
  return low + (high - low) * (position - below);
}

LabelMetrics metrics_of_absent_label(int32_t label, int64_t voxel_count) {
  LabelMetrics m;
  m.label = label;
  m.true_negatives = voxel_count;
  m.dice = m.iou = m.precision = m.recall = kNaN;
  m.hausdorff_95_mm = m.hausdorff_max_mm = m.average_surface_distance_mm = kNaN;
  m.normalized_surface_dice = kNaN;
  return m;
}

std::vector<LabelMetrics> compute_label_metrics(const at::Tensor& reference,
                                                const at::Tensor& prediction,
                                                const std::array<double, 3>& spacing_xyz,
                                                const MetricOptions& options) {
  if (reference.dim() != 3 || prediction.dim() != 3)
    throw Error("compute_label_metrics: label maps must be 3-D [Z, Y, X]");
  if (reference.sizes() != prediction.sizes())
    throw Error("compute_label_metrics: reference and prediction differ in size");
  if (reference.is_floating_point() || prediction.is_floating_point())
    throw Error("compute_label_metrics: label maps must hold integers, not floating point");
  const at::Tensor ref = reference.to(at::kInt).contiguous();
  const at::Tensor pred = prediction.to(at::kInt).contiguous();
  const std::array<int64_t, 3> size{ref.size(0), ref.size(1), ref.size(2)};
  const std::array<double, 3> spacing_zyx{spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]};
  const int64_t voxel_count = ref.numel();
  const double voxel_volume = spacing_xyz[0] * spacing_xyz[1] * spacing_xyz[2];

  std::vector<LabelMetrics> results;
  if (voxel_count == 0) return results;
  const int32_t min_value =
      std::min(ref.min().item<int32_t>(), pred.min().item<int32_t>());
  const int32_t max_value =
      std::max(ref.max().item<int32_t>(), pred.max().item<int32_t>());
  const int64_t range = int64_t{max_value} - min_value + 1;
  if (range > kMaxLabelRange)
    throw Error("label map", "label values span " + std::to_string(min_value) + ".." +
                std::to_string(max_value) + ", too wide for a label map");
  const int32_t* ref_data = ref.data_ptr<int32_t>();
  const int32_t* pred_data = pred.data_ptr<int32_t>();
  const LabelCensus census =
      take_census(ref_data, pred_data, size[0], size[1], size[2], min_value, range);

  std::vector<int32_t> labels = options.labels;
  if (labels.empty()) {
    for (int64_t v = 0; v < range; ++v)
      if (v + min_value != 0 && (census.reference_count[v] || census.prediction_count[v]))
        labels.push_back(static_cast<int32_t>(v + min_value));
  }
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());

  for (int32_t label : labels) {
    const int64_t v = int64_t{label} - min_value;
    if (v < 0 || v >= range) {
      results.push_back(metrics_of_absent_label(label, voxel_count));
      continue;
    }
    LabelMetrics m;
    m.label = label;
    m.true_positives = census.agreement_count[v];
    m.reference_voxels = census.reference_count[v];
    m.prediction_voxels = census.prediction_count[v];
    m.false_positives = m.prediction_voxels - m.true_positives;
    m.false_negatives = m.reference_voxels - m.true_positives;
    m.true_negatives = voxel_count - m.true_positives - m.false_positives - m.false_negatives;
    const double tp = m.true_positives, fp = m.false_positives, fn = m.false_negatives;
    m.dice = ratio_or_nan(2 * tp, 2 * tp + fp + fn);
    m.iou = ratio_or_nan(tp, tp + fp + fn);
    m.precision = ratio_or_nan(tp, tp + fp);
    m.recall = ratio_or_nan(tp, tp + fn);
    m.reference_volume_mm3 = m.reference_voxels * voxel_volume;
    m.prediction_volume_mm3 = m.prediction_voxels * voxel_volume;
    m.volume_difference_mm3 = m.prediction_volume_mm3 - m.reference_volume_mm3;
    if (m.reference_voxels > 0 && m.prediction_voxels > 0) {
      fill_surface_metrics(m, ref_data, pred_data, size, census.box[v], spacing_zyx,
                           options.tolerance_mm);
    } else {
      m.hausdorff_95_mm = m.hausdorff_max_mm = m.average_surface_distance_mm = kNaN;
      // No surface point can be matched when one side is empty.
      m.normalized_surface_dice = (m.reference_voxels + m.prediction_voxels) > 0 ? 0.0 : kNaN;
      if (m.reference_voxels + m.prediction_voxels > 0) {
        const auto& b = census.box[v];
        m.worst_error_zyx = {(b[0] + b[3]) / 2, (b[1] + b[4]) / 2, (b[2] + b[5]) / 2};
      }
    }
    results.push_back(m);
  }
  return results;
}

}  // namespace iris::eval
