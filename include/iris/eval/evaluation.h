#pragma once
// Folder (or file) evaluation: match reference and prediction cases by name,
// compute the metrics of every case, and render the summaries: nnU-Net v2's
// summary.json schema plus our metrics, a CSV with one row per case × label,
// and a console table of mean ± std per label.
#include <map>
#include <string>
#include <vector>

#include "iris/common/image.h"
#include "iris/eval/label_metrics.h"

namespace iris::eval {

struct CasePair {
  std::string case_name;       // file name without its extension(s)
  std::string reference_file;
  std::string prediction_file;
};

// Both folders: every reference case needs a prediction of the same case name
// and vice versa (throws iris::Error listing the unmatched ones). Both files:
// one pair. Image files: .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd.
std::vector<CasePair> match_cases(const std::string& reference, const std::string& prediction);

struct CaseResult {
  CasePair files;
  int64_t voxel_count = 0;
  std::vector<LabelMetrics> labels;  // ascending label order
};

struct EvaluationOptions {
  std::vector<int32_t> labels;                   // empty: union found in all cases
  std::map<int32_t, std::string> label_names;    // for reports only
  double tolerance_mm = 2.0;
};

struct EvaluationSummary {
  std::vector<int32_t> labels;
  std::map<int32_t, std::string> label_names;
  double tolerance_mm = 2.0;
  std::vector<CaseResult> cases;
};

// Metrics of one case; throws iris::Error naming both files when the grids differ.
CaseResult evaluate_case(const Image& reference, const Image& prediction,
                         const CasePair& files, const EvaluationOptions& options);

// Reads and evaluates every pair. Geometry mismatches of all cases are
// collected and thrown as one iris::Error (one line per case, both files named).
EvaluationSummary evaluate(const std::vector<CasePair>& pairs, const EvaluationOptions& options);

// Gives every case an entry for every label of the summary (labels absent
// from a case get metrics_of_absent_label) and sets summary.labels.
void complete_labels(EvaluationSummary& summary);

// One metric of a label across cases, by the JSON name ("Dice", "HD95", ...).
double metric_value(const LabelMetrics& m, const std::string& name);
// All JSON metric names, nnU-Net's first.
const std::vector<std::string>& metric_names();

struct MeanStd {
  double mean = 0, std = 0;
  int64_t count = 0;  // cases with a finite value
};
// NaN values are skipped (numpy nanmean); mean is NaN when every value is.
MeanStd mean_std_over_cases(const EvaluationSummary& summary, int32_t label, const std::string& metric);

std::string summary_json(const EvaluationSummary& summary);
std::string metrics_csv(const EvaluationSummary& summary);
std::string console_table(const EvaluationSummary& summary);

// Parses "1,2,5" into labels; an iris::SettingError naming "labels" for
// anything else.
std::vector<int32_t> parse_label_list(const std::string& text);
// Label names file: lines "<value> <name>" or "<value>,<name>"; '#' comments.
std::map<int32_t, std::string> read_label_names(const std::string& path);

// A number as Python writes it (shortest round trip, "1.0", NaN, Infinity),
// for the CSV next to summary.json.
std::string python_number(double value);

}  // namespace iris::eval
