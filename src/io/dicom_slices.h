#pragma once
// How a stack of DICOM slices becomes a 3-D grid, shared by the series
// reader and the DICOM-SEG writer (whose frames must land on exactly the
// grid the reader builds). Private to the io library; no ITK or DCMTK here.
#include <sstream>
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "iris/common/error.h"

namespace iris::io::detail {

// Single-frame series whose pixels went to GDCM (through ITK) rather than
// DCMTK: counted for the tests that check which library read what.
inline std::atomic<long>& gdcm_series_reads() {
  static std::atomic<long> count{0};
  return count;
}

struct SliceStack {
  std::array<double, 3> normal{};  // unit, pointing from the first slice to the last
  double mean_step = 0;            // mm between neighbouring slices along the normal
  double max_deviation = 0;        // mm, largest |step - mean_step|
};

// `positions`: ImagePositionPatient of the slices, already sorted along the
// normal; `orientation`: ImageOrientationPatient (row, column cosines).
// Throws iris::Error(where, what + "...") for an invalid orientation or
// slices at one position.
inline SliceStack slice_stack(const std::vector<std::array<double, 3>>& positions,
                              const std::vector<double>& orientation, const std::string& where,
                              const std::string& what) {
  if (orientation.size() != 6) throw Error(where, what + " has no valid ImageOrientationPatient");
  const double* r = orientation.data();
  const double* c = orientation.data() + 3;
  SliceStack s;
  s.normal = {r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]};
  auto dot = [](const std::array<double, 3>& a, const std::array<double, 3>& b) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  };
  const double length = std::sqrt(dot(s.normal, s.normal));
  if (!(length > 0.5)) throw Error(where, what + " has an invalid ImageOrientationPatient");
  for (double& v : s.normal) v /= length;
  // Orient the normal so that the slice index grows along it.
  const std::array<double, 3> first_to_last{positions.back()[0] - positions.front()[0],
                                            positions.back()[1] - positions.front()[1],
                                            positions.back()[2] - positions.front()[2]};
  if (dot(first_to_last, s.normal) < 0)
    for (double& v : s.normal) v = -v;
  std::vector<double> along;
  for (const auto& p : positions) along.push_back(dot(p, s.normal));
  s.mean_step = (along.back() - along.front()) / static_cast<double>(along.size() - 1);
  if (!(s.mean_step > 0)) throw Error(where, what + " has its slices at one position (duplicates?)");
  for (size_t i = 1; i < along.size(); ++i) {
    // A copy of a slice is not "uneven spacing": say what it is.
    if (along[i] - along[i - 1] < 0.01 * s.mean_step) {
      std::ostringstream at;
      at << positions[i][0] << "\\" << positions[i][1] << "\\" << positions[i][2];
      throw Error(where, what + " has two slices at one position (slices " + std::to_string(i) + " and " +
                             std::to_string(i + 1) + " of " + std::to_string(along.size()) + ", ImagePositionPatient " +
                             at.str() + "): a duplicated slice? remove the copy");
    }
    s.max_deviation = std::max(s.max_deviation, std::abs((along[i] - along[i - 1]) - s.mean_step));
  }
  return s;
}

}  // namespace iris::io::detail
