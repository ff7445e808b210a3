#pragma once
// The RSNA Intracranial Aneurysm Detection 2025 metric (iris-eval rsna): ROC
// AUC of every label column, then their weighted mean with "Aneurysm Present"
// weighted 13 and each of the 13 location columns 1. Details and the handling
// of undefined AUCs: docs/evaluation.md.
#include <cstdint>
#include <string>
#include <vector>

namespace iris::eval {

// The 13 location columns of the competition's train.csv, then "Aneurysm Present".
const std::vector<std::string>& rsna_label_columns();
inline constexpr const char* kRsnaSeriesColumn = "SeriesInstanceUID";
inline constexpr const char* kRsnaPresentColumn = "Aneurysm Present";
inline constexpr double kRsnaPresentWeight = 13.0;

// ROC AUC of `scores` for binary `labels` (0/1), as the Mann–Whitney U
// statistic with average ranks for tied scores (a tied positive/negative pair
// counts one half). NaN when the labels hold only one class.
double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels);

// A parsed CSV file: RFC 4180 quoting, "\n" or "\r\n" lines, a UTF-8 BOM is skipped.
struct CsvTable {
  std::string source;  // file name for messages
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> line_of_row;  // 1-based line number of each row
};
// Throws iris::Error naming `source` and the line on a malformed row.
CsvTable parse_csv(const std::string& text, const std::string& source);
CsvTable read_csv(const std::string& path);
// A field without the blanks around it.
std::string csv_field(const std::string& text);
// A whole field as a finite decimal number ("0.5abc", "nan", "" are not).
bool csv_number(const std::string& text, double& value);

struct ColumnAuc {
  std::string column;
  double weight = 1.0;
  double auc = 0;  // NaN when the truth has one class only (column excluded)
  int64_t positives = 0, negatives = 0;
};

struct RsnaScore {
  std::vector<ColumnAuc> columns;  // rsna_label_columns() order
  double weighted_auc = 0;         // over the columns with a defined AUC
  int64_t series = 0;
  std::vector<std::string> warnings;  // one per excluded column
};

// Every truth series needs exactly one prediction row and vice versa; both
// files need SeriesInstanceUID and the 14 label columns (extra columns are
// ignored). Truth values must be 0 or 1, predictions finite numbers. Throws
// iris::Error naming the file, line, column or series otherwise, and when no
// column has both classes.
RsnaScore score_rsna(const CsvTable& predictions, const CsvTable& truth);

// {"columns": {...}, "excluded_columns": [...], "series": N, "warnings": [...],
//  "weighted_auc": x}, keys sorted, 4-space indent, NaN as Python writes it.
std::string rsna_json(const RsnaScore& score);
std::string rsna_console_table(const RsnaScore& score);

}  // namespace iris::eval
