#pragma once
// Per-class statistics of a segmentation without ground truth (as
// TotalSegmentator's --statistics): size, volume, intensity of the image
// inside the mask, centroid, bounding box, connected components.
#include <array>
#include <string>
#include <vector>

#include "iris/common/image.h"
#include "iris/common/json.h"

namespace iris::infer {

struct ClassStatistics {
  long label = 0;
  std::string name;
  long voxels = 0;
  double volume_mm3 = 0;
  // Of the image's voxels inside the mask (NaN when the mask is empty):
  // mean, standard deviation (population), median and the 5th and 95th
  // percentiles (linear interpolation between order statistics, numpy's default).
  double mean = 0, std = 0, median = 0, p5 = 0, p95 = 0;
  std::array<double, 3> centroid_mm{};             // world (LPS) coordinates of the mean voxel centre
  std::array<long, 3> bbox_min{}, bbox_max{};      // voxel indices x, y, z, inclusive; -1 when empty
  long components = 0;                             // 6-connected
};

// One entry per label value (`names` may be shorter). `image` and `labels`
// share one grid; iris::Error otherwise.
std::vector<ClassStatistics> class_statistics(const Image& image, const Image& labels, const std::vector<long>& label_values,
                                              const std::vector<std::string>& names = {});

// {"case": {"LABEL": {...}}} as JSON, or one CSV row per case and class.
Json statistics_json(const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& cases);
std::string statistics_csv(const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& cases);

}  // namespace iris::infer
