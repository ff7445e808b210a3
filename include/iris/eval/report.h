#pragma once
// Self-contained HTML report of an evaluation (iris-eval --html DIR): metric
// tables, a Dice box plot per label (inline SVG) and, per case, axial /
// coronal / sagittal PNG slices through the largest error, each class in its
// own colour (reference outlined, prediction filled, translucent) with a
// legend. Layout and conventions: docs/evaluation.md.
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "iris/eval/evaluation.h"

namespace iris::eval {

struct ReportOptions {
  // Intensity image under the outlines: one file (single case) or a folder
  // matched by case name like the label maps. Empty: blank background.
  std::string image;
};

// Case name -> intensity image file for every case of `pairs`. A folder entry
// matches a case by its exact name or the name plus nnU-Net's "_0000" channel
// suffix. Throws iris::Error naming the cases without an image.
std::map<std::string, std::string> match_images(const std::string& image,
                                                const std::vector<CasePair>& pairs);

// Writes DIR/index.html and its PNGs. The report is built in a hidden sibling
// folder and renamed to DIR only when complete; an earlier report in DIR is
// replaced, a non-empty DIR without index.html is refused (iris::Error).
void write_html_report(const EvaluationSummary& summary, const std::string& dir,
                       const ReportOptions& options = {});

// --- pieces of the report, exposed for tests ---------------------------------

// Tukey box plot statistics of the finite values (NaN skipped): quartiles by
// numpy's linear percentile, whiskers at the most extreme values within
// 1.5 IQR of the box, everything beyond listed as outliers.
struct BoxStatistics {
  int64_t count = 0;
  double q1 = 0, median = 0, q3 = 0, whisker_low = 0, whisker_high = 0;
  std::vector<double> outliers;
};
BoxStatistics box_statistics(const std::vector<double>& values);

// The colour of a label value in the slices and legends: 18 distinct colours,
// cycled (label 1 and 19 share one), and its "#rrggbb" for HTML.
struct LabelColour {
  uint8_t r, g, b;
};
LabelColour label_colour(int32_t label);
std::string colour_hex(LabelColour colour);

// Case indices sorted worst first: by the mean Dice over labels (NaN Dice
// skipped), ascending; cases without any defined Dice last, ties by name.
std::vector<size_t> cases_worst_first(const EvaluationSummary& summary);

// The voxel (z, y, x) of the case's largest error: the worst_error_zyx of the
// label with the largest HD (a label with an error but no distance when no HD
// is defined); -1s when the case has no error at all.
std::array<int64_t, 3> largest_error_zyx(const CaseResult& result);

}  // namespace iris::eval
