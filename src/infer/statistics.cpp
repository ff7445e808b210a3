#include "iris/infer/statistics.h"

#include <cmath>
#include <limits>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/csv.h"
#include "iris/common/error.h"
#include "iris/common/mask_box.h"
#include "iris/infer/connected_components.h"

namespace iris::infer {

namespace {

double sorted_quantile(const at::Tensor& sorted, double q) {
  const long n = sorted.numel();
  const double pos = q * static_cast<double>(n - 1);
  const long lo = static_cast<long>(std::floor(pos));
  const long hi = std::min(lo + 1, n - 1);
  const double a = sorted[lo].item<double>(), b = sorted[hi].item<double>();
  return a + (pos - static_cast<double>(lo)) * (b - a);
}

std::string csv_number(double v) {
  if (std::isnan(v)) return "";
  std::ostringstream s;
  s.precision(10);
  s << v;
  return s.str();
}

}  // namespace

std::vector<ClassStatistics> class_statistics(const Image& image, const Image& labels,
                                              const std::vector<long>& label_values,
                                              const std::vector<std::string>& names) {
  if (image.voxels.dim() != 3 || labels.voxels.sizes() != image.voxels.sizes() ||
      !image.geometry.same_grid(labels.geometry))
    throw Error(labels.source.empty() ? "statistics" : labels.source,
                "the label map and the image must share one grid (" + labels.geometry.describe() + " vs " +
                    image.geometry.describe() + ")");
  const auto& g = image.geometry;
  const double voxel_mm3 = g.spacing[0] * g.spacing[1] * g.spacing[2];
  const at::Tensor values = image.voxels.to(at::kDouble);
  std::vector<ClassStatistics> out;
  for (size_t c = 0; c < label_values.size(); ++c) {
    ClassStatistics s;
    s.label = label_values[c];
    if (c < names.size()) s.name = names[c];
    const at::Tensor mask = labels.voxels.eq(s.label);
    s.voxels = mask.sum().item<long>();
    s.volume_mm3 = static_cast<double>(s.voxels) * voxel_mm3;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (s.voxels == 0) {
      s.mean = s.std = s.median = s.p5 = s.p95 = nan;
      s.centroid_mm = {nan, nan, nan};
      s.bbox_min = s.bbox_max = {-1, -1, -1};
      out.push_back(s);
      continue;
    }
    const at::Tensor inside = values.masked_select(mask);
    s.mean = inside.mean().item<double>();
    s.std = inside.std(/*unbiased=*/false).item<double>();
    const at::Tensor sorted = std::get<0>(inside.sort());
    s.median = sorted_quantile(sorted, 0.5);
    s.p5 = sorted_quantile(sorted, 0.05);
    s.p95 = sorted_quantile(sorted, 0.95);
    // Mean voxel index (x, y, z), then to world coordinates.
    const at::Tensor idx = at::nonzero(mask).to(at::kDouble).mean(0);  // z, y, x
    const double index[3] = {idx[2].item<double>(), idx[1].item<double>(), idx[0].item<double>()};
    for (int r = 0; r < 3; ++r) {
      s.centroid_mm[r] = g.origin[r];
      for (int a = 0; a < 3; ++a) s.centroid_mm[r] += g.direction[r * 3 + a] * g.spacing[a] * index[a];
    }
    const auto box = mask_box(mask);
    for (int a = 0; a < 3; ++a) {  // box is z, y, x
      s.bbox_min[a] = box->lo[2 - a];
      s.bbox_max[a] = box->hi[2 - a];
    }
    s.components = static_cast<long>(connected_components(mask, Connectivity::faces).sizes.size());
    out.push_back(s);
  }
  return out;
}

Json statistics_json(const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& cases) {
  Json j = Json::object();
  for (const auto& [name, classes] : cases) {
    Json c = Json::object();
    for (const auto& s : classes) {
      c[std::to_string(s.label)] = {
          {"name", s.name},
          {"voxels", s.voxels},
          {"volume_mm3", number(s.volume_mm3)},
          {"intensity", {{"mean", number(s.mean)}, {"std", number(s.std)}, {"median", number(s.median)},
                         {"p5", number(s.p5)}, {"p95", number(s.p95)}}},
          {"centroid_mm", {number(s.centroid_mm[0]), number(s.centroid_mm[1]), number(s.centroid_mm[2])}},
          {"bbox_min", s.bbox_min},
          {"bbox_max", s.bbox_max},
          {"components", s.components}};
    }
    j[name] = c;
  }
  return j;
}

std::string statistics_csv(const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& cases) {
  std::ostringstream out;
  out << "case,label,name,voxels,volume_mm3,mean,std,median,p5,p95,centroid_x_mm,centroid_y_mm,centroid_z_mm,"
         "bbox_min_x,bbox_min_y,bbox_min_z,bbox_max_x,bbox_max_y,bbox_max_z,components\n";
  const auto field = csv_quoted;
  for (const auto& [name, classes] : cases)
    for (const auto& s : classes) {
      out << field(name) << ',' << s.label << ',' << field(s.name) << ',' << s.voxels << ',' << csv_number(s.volume_mm3);
      for (double v : {s.mean, s.std, s.median, s.p5, s.p95}) out << ',' << csv_number(v);
      for (double v : s.centroid_mm) out << ',' << csv_number(v);
      for (long v : s.bbox_min) out << ',' << v;
      for (long v : s.bbox_max) out << ',' << v;
      out << ',' << s.components << '\n';
    }
  return out.str();
}

}  // namespace iris::infer
