#include "iris/eval/rsna.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/eval/evaluation.h"

namespace iris::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::map<std::string, size_t> column_index(const CsvTable& table) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < table.header.size(); ++i) {
    const std::string name = csv_field(table.header[i]);
    if (!index.emplace(name, i).second) throw Error(table.source, "column '" + name + "' appears twice");
  }
  return index;
}

void require_columns(const CsvTable& table, const std::map<std::string, size_t>& index) {
  std::vector<std::string> missing;
  if (!index.count(kRsnaSeriesColumn)) missing.push_back(kRsnaSeriesColumn);
  for (const auto& c : rsna_label_columns())
    if (!index.count(c)) missing.push_back(c);
  if (missing.empty()) return;
  std::string list;
  for (const auto& m : missing) list += (list.empty() ? "'" : ", '") + m + "'";
  throw Error(table.source, "missing column(s) " + list);
}

// Series UID -> row number, refusing duplicates and empty UIDs.
std::map<std::string, size_t> rows_by_series(const CsvTable& table, size_t series_column) {
  std::map<std::string, size_t> rows;
  for (size_t r = 0; r < table.rows.size(); ++r) {
    const std::string uid = csv_field(table.rows[r][series_column]);
    const std::string where = table.source + ":" + std::to_string(table.line_of_row[r]);
    if (uid.empty()) throw Error(where, std::string("empty ") + kRsnaSeriesColumn);
    if (!rows.emplace(uid, r).second) throw Error(where, "series " + uid + " appears twice");
  }
  return rows;
}

std::string list_some(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < 10; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > 10) s += ", ... (" + std::to_string(items.size()) + " in all)";
  return s;
}

}  // namespace

std::string csv_field(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

bool csv_number(const std::string& text, double& value) {
  const std::string t = csv_field(text);
  if (t.empty()) return false;
  char* end = nullptr;
  value = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size() && std::isfinite(value);
}

const std::vector<std::string>& rsna_label_columns() {
  static const std::vector<std::string> columns{
      "Left Infraclinoid Internal Carotid Artery",
      "Right Infraclinoid Internal Carotid Artery",
      "Left Supraclinoid Internal Carotid Artery",
      "Right Supraclinoid Internal Carotid Artery",
      "Left Middle Cerebral Artery",
      "Right Middle Cerebral Artery",
      "Anterior Communicating Artery",
      "Left Anterior Cerebral Artery",
      "Right Anterior Cerebral Artery",
      "Left Posterior Communicating Artery",
      "Right Posterior Communicating Artery",
      "Basilar Tip",
      "Other Posterior Circulation",
      kRsnaPresentColumn};
  return columns;
}

double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels) {
  if (scores.size() != labels.size()) throw Error("roc_auc: scores and labels differ in length");
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Sum of the (1-based, tie-averaged) ranks of the positives.
  double positive_rank_sum = 0;
  int64_t positives = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double average_rank = 0.5 * (static_cast<double>(i + 1) + static_cast<double>(j));
    for (size_t k = i; k < j; ++k)
      if (labels[order[k]]) positive_rank_sum += average_rank, ++positives;
    i = j;
  }
  const int64_t negatives = static_cast<int64_t>(n) - positives;
  if (positives == 0 || negatives == 0) return kNaN;
  const double u = positive_rank_sum - 0.5 * static_cast<double>(positives) * (positives + 1);
  return u / (static_cast<double>(positives) * static_cast<double>(negatives));
}

CsvTable parse_csv(const std::string& text, const std::string& source) {
  CsvTable table;
  table.source = source;
  size_t pos = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
  int64_t line = 1;
  bool first = true;
  while (pos < text.size()) {
    const int64_t row_line = line;
    std::vector<std::string> fields(1);
    bool quoted = false;
    for (; pos < text.size(); ++pos) {
      const char c = text[pos];
      if (quoted) {
        if (c == '"' && pos + 1 < text.size() && text[pos + 1] == '"') fields.back() += '"', ++pos;
        else if (c == '"') quoted = false;
        else {
          if (c == '\n') ++line;
          fields.back() += c;
        }
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        fields.emplace_back();
      } else if (c == '\n') {
        ++pos;
        ++line;
        break;
      } else if (c != '\r') {
        fields.back() += c;
      }
    }
    if (quoted) throw Error(source + ":" + std::to_string(row_line), "unterminated quoted field");
    if (fields.size() == 1 && csv_field(fields[0]).empty()) continue;  // blank line
    if (first) {
      table.header = std::move(fields);
      first = false;
      continue;
    }
    if (fields.size() != table.header.size())
      throw Error(source + ":" + std::to_string(row_line),
                  std::to_string(fields.size()) + " fields, the header has " +
                      std::to_string(table.header.size()));
    table.rows.push_back(std::move(fields));
    table.line_of_row.push_back(row_line);
  }
  if (first) throw Error(source, "empty CSV file (no header)");
  return table;
}

CsvTable read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open CSV file");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_csv(text.str(), path);
}

RsnaScore score_rsna(const CsvTable& predictions, const CsvTable& truth) {
  const auto pred_columns = column_index(predictions), truth_columns = column_index(truth);
  require_columns(predictions, pred_columns);
  require_columns(truth, truth_columns);
  const auto pred_rows = rows_by_series(predictions, pred_columns.at(kRsnaSeriesColumn));
  const auto truth_rows = rows_by_series(truth, truth_columns.at(kRsnaSeriesColumn));
  if (truth_rows.empty()) throw Error(truth.source, "no series");
  std::vector<std::string> missing, extra;
  for (const auto& entry : truth_rows)
    if (!pred_rows.count(entry.first)) missing.push_back(entry.first);
  for (const auto& entry : pred_rows)
    if (!truth_rows.count(entry.first)) extra.push_back(entry.first);
  if (!missing.empty() || !extra.empty()) {
    std::string what;
    if (!missing.empty()) what = "no prediction for truth series " + list_some(missing);
    if (!extra.empty())
      what += (what.empty() ? "" : "; ") + std::string("series not in the truth: ") + list_some(extra);
    throw Error(predictions.source, what);
  }

  RsnaScore score;
  score.series = static_cast<int64_t>(truth_rows.size());
  double weighted_sum = 0, weight_sum = 0;
  for (const auto& column : rsna_label_columns()) {
    const size_t pc = pred_columns.at(column), tc = truth_columns.at(column);
    std::vector<double> scores;
    std::vector<int> labels;
    for (const auto& [uid, truth_row] : truth_rows) {
      const size_t pred_row = pred_rows.at(uid);
      double p = 0, t = 0;
      if (!csv_number(predictions.rows[pred_row][pc], p))
        throw Error(predictions.source + ":" + std::to_string(predictions.line_of_row[pred_row]),
                    "column '" + column + "': '" + predictions.rows[pred_row][pc] +
                        "' is not a finite number");
      if (!csv_number(truth.rows[truth_row][tc], t) || (t != 0 && t != 1))
        throw Error(truth.source + ":" + std::to_string(truth.line_of_row[truth_row]),
                    "column '" + column + "': '" + truth.rows[truth_row][tc] + "' is not 0 or 1");
      scores.push_back(p);
      labels.push_back(t == 1 ? 1 : 0);
    }
    ColumnAuc c;
    c.column = column;
    c.weight = column == kRsnaPresentColumn ? kRsnaPresentWeight : 1.0;
    c.positives = std::count(labels.begin(), labels.end(), 1);
    c.negatives = static_cast<int64_t>(labels.size()) - c.positives;
    c.auc = roc_auc(scores, labels);
    if (std::isnan(c.auc)) {
      score.warnings.push_back("column '" + column + "' has only " +
                               (c.positives ? "positive" : "negative") +
                               " series in the truth: AUC undefined, column excluded");
    } else {
      weighted_sum += c.weight * c.auc;
      weight_sum += c.weight;
    }
    score.columns.push_back(c);
  }
  if (weight_sum == 0)
    throw Error(truth.source, "no label column has both classes; the weighted AUC is undefined");
  score.weighted_auc = weighted_sum / weight_sum;
  return score;
}

std::string rsna_json(const RsnaScore& score) {
  Json root;
  root["columns"] = Json::object();
  root["excluded_columns"] = Json::array();
  for (const auto& c : score.columns) {
    root["columns"][c.column] = {
        {"auc", number(c.auc)}, {"negatives", c.negatives}, {"positives", c.positives}, {"weight", number(c.weight)}};
    if (std::isnan(c.auc)) root["excluded_columns"].push_back(c.column);
  }
  root["series"] = score.series;
  root["warnings"] = score.warnings;
  root["weighted_auc"] = number(score.weighted_auc);
  return dump(root, 4);  // strict JSON: an excluded column's AUC is null
}

std::string rsna_console_table(const RsnaScore& score) {
  std::ostringstream s;
  s << std::left << std::setw(45) << "column" << std::setw(8) << "weight" << std::setw(10) << "pos/neg"
    << "AUC\n";
  for (const auto& c : score.columns) {
    std::ostringstream auc;
    if (std::isnan(c.auc)) auc << "undefined (excluded)";
    else auc << std::fixed << std::setprecision(4) << c.auc;
    s << std::setw(45) << c.column << std::setw(8) << c.weight << std::setw(10)
      << (std::to_string(c.positives) + "/" + std::to_string(c.negatives)) << auc.str() << "\n";
  }
  s << "weighted AUC over " << score.series << " series: " << std::fixed << std::setprecision(4)
    << score.weighted_auc << "\n";
  return s.str();
}

}  // namespace iris::eval
