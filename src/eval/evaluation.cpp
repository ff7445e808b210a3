#include "iris/eval/evaluation.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

#include "iris/common/atomic_file.h"
#include "iris/common/csv.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/common/label_list.h"
#include "iris/common/json.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace iris::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool is_image_file(const fs::path& p) { return fs::is_regular_file(p) && has_image_extension(p.string()); }

std::string case_name_of(const fs::path& p) { return case_name(p.string()); }

std::map<std::string, std::string> images_by_case(const std::string& folder) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (!is_image_file(entry.path())) continue;
    const std::string name = case_name_of(entry.path());
    if (!out.emplace(name, entry.path().string()).second)
      throw Error(folder, "two images for case '" + name + "': " + out[name] + " and " +
                              entry.path().string());
  }
  return out;
}

// Integer-valued metrics are written as JSON integers, as nnU-Net does.
bool is_count_metric(const std::string& name) {
  return name == "TP" || name == "FP" || name == "FN" || name == "TN" || name == "n_pred" ||
         name == "n_ref";
}

// {"Dice": .., ...} for one label (keys sorted, as nnU-Net writes them).
Json metrics_json(const LabelMetrics* m, const std::map<std::string, double>* means) {
  Json out = Json::object();
  for (const auto& name : metric_names()) {
    if (!m) {
      out[name] = number(means->at(name));
      continue;
    }
    const double v = metric_value(*m, name);
    out[name] = is_count_metric(name) ? Json(static_cast<int64_t>(v)) : number(v);
  }
  return out;
}

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "nan";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

}  // namespace

std::string python_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  std::string s(buf, end);
  // Python writes floats with a '.' or an exponent ("1.0", not "1").
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::vector<CasePair> match_cases(const std::string& reference, const std::string& prediction) {
  if (!fs::exists(reference)) throw Error(reference, "reference does not exist");
  if (!fs::exists(prediction)) throw Error(prediction, "prediction does not exist");
  const bool ref_dir = fs::is_directory(reference), pred_dir = fs::is_directory(prediction);
  if (ref_dir != pred_dir)
    throw Error(reference + " / " + prediction,
                "reference and prediction must both be folders or both be files");
  if (!ref_dir) return {{case_name_of(reference), reference, prediction}};

  const auto refs = images_by_case(reference), preds = images_by_case(prediction);
  if (refs.empty()) throw Error(reference, "no image files (.nii.gz, .nii, .nrrd, .mha, ...) found");
  std::vector<std::string> missing, extra;
  std::vector<CasePair> pairs;
  for (const auto& [name, file] : refs) {
    auto it = preds.find(name);
    if (it == preds.end()) missing.push_back(name);
    else pairs.push_back({name, file, it->second});
  }
  for (const auto& [name, file] : preds)
    if (!refs.count(name)) extra.push_back(name);
  if (!missing.empty() || !extra.empty()) {
    std::string what;
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 20) s += ", ... (" + std::to_string(v.size()) + " in all)";
      return s;
    };
    if (!missing.empty()) what += "no prediction for reference case(s) " + list(missing);
    if (!extra.empty())
      what += std::string(what.empty() ? "" : "; ") + "no reference for prediction case(s) " +
              list(extra);
    throw Error(reference + " vs " + prediction, what);
  }
  return pairs;
}

CaseResult evaluate_case(const Image& reference, const Image& prediction,
                         const CasePair& files, const EvaluationOptions& options) {
  try {
    io::check_same_grid(reference, prediction);
  } catch (const Error& e) {
    throw Error(files.prediction_file,
                "case '" + files.case_name + "': prediction grid differs from reference " +
                    files.reference_file + " (" + e.reason() + ")");
  }
  MetricOptions metric_options;
  metric_options.labels = options.labels;
  metric_options.tolerance_mm = options.tolerance_mm;
  CaseResult result;
  result.files = files;
  result.voxel_count = reference.voxels.numel();
  result.labels = compute_label_metrics(reference.voxels, prediction.voxels,
                                        reference.geometry.spacing, metric_options);
  return result;
}

EvaluationSummary evaluate(const std::vector<CasePair>& pairs, const EvaluationOptions& options) {
  EvaluationSummary summary;
  summary.labels = options.labels;
  summary.label_names = options.label_names;
  summary.tolerance_mm = options.tolerance_mm;
  std::vector<std::string> grid_errors;
  for (const auto& pair : pairs) {
    const Image reference = io::read_labels(pair.reference_file);
    const Image prediction = io::read_labels(pair.prediction_file);
    try {
      summary.cases.push_back(evaluate_case(reference, prediction, pair, options));
    } catch (const Error& e) {
      if (e.reason().find("grid differs") == std::string::npos) throw;
      grid_errors.push_back(e.what());
    }
  }
  if (!grid_errors.empty()) {
    std::string what = std::to_string(grid_errors.size()) + " case(s) with mismatched geometry:";
    for (const auto& line : grid_errors) what += "\n  " + line;
    throw Error(what);
  }
  complete_labels(summary);
  return summary;
}

void complete_labels(EvaluationSummary& summary) {
  std::set<int32_t> labels(summary.labels.begin(), summary.labels.end());
  if (labels.empty())
    for (const auto& c : summary.cases)
      for (const auto& m : c.labels) labels.insert(m.label);
  summary.labels.assign(labels.begin(), labels.end());
  for (auto& c : summary.cases) {
    std::map<int32_t, LabelMetrics> by_label;
    for (const auto& m : c.labels) by_label[m.label] = m;
    c.labels.clear();
    for (int32_t label : summary.labels) {
      auto it = by_label.find(label);
      c.labels.push_back(it != by_label.end() ? it->second
                                              : metrics_of_absent_label(label, c.voxel_count));
    }
  }
}

const std::vector<std::string>& metric_names() {
  static const std::vector<std::string> names{
      "Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref",
      "Precision", "Recall", "HD95", "HD", "ASSD", "NSD",
      "Volume_ref_mm3", "Volume_pred_mm3", "Volume_diff_mm3"};
  return names;
}

double metric_value(const LabelMetrics& m, const std::string& name) {
  if (name == "Dice") return m.dice;
  if (name == "IoU") return m.iou;
  if (name == "FP") return static_cast<double>(m.false_positives);
  if (name == "TP") return static_cast<double>(m.true_positives);
  if (name == "FN") return static_cast<double>(m.false_negatives);
  if (name == "TN") return static_cast<double>(m.true_negatives);
  if (name == "n_pred") return static_cast<double>(m.prediction_voxels);
  if (name == "n_ref") return static_cast<double>(m.reference_voxels);
  if (name == "Precision") return m.precision;
  if (name == "Recall") return m.recall;
  if (name == "HD95") return m.hausdorff_95_mm;
  if (name == "HD") return m.hausdorff_max_mm;
  if (name == "ASSD") return m.average_surface_distance_mm;
  if (name == "NSD") return m.normalized_surface_dice;
  if (name == "Volume_ref_mm3") return m.reference_volume_mm3;
  if (name == "Volume_pred_mm3") return m.prediction_volume_mm3;
  if (name == "Volume_diff_mm3") return m.volume_difference_mm3;
  throw Error("metric_value: unknown metric '" + name + "'");
}

MeanStd mean_std_over_cases(const EvaluationSummary& summary, int32_t label,
                            const std::string& metric) {
  double sum = 0, sum_sq = 0;
  MeanStd out;
  for (const auto& c : summary.cases)
    for (const auto& m : c.labels) {
      if (m.label != label) continue;
      const double v = metric_value(m, metric);
      if (std::isnan(v)) continue;
      sum += v;
      sum_sq += v * v;
      ++out.count;
    }
  if (out.count == 0) return {kNaN, kNaN, 0};
  out.mean = sum / out.count;
  // Population std (numpy's default ddof=0).
  out.std = std::sqrt(std::max(0.0, sum_sq / out.count - out.mean * out.mean));
  return out;
}

std::string summary_json(const EvaluationSummary& summary) {
  // Per label means (nanmean over cases), then nnU-Net's foreground_mean: the
  // plain mean of the label means (NaN propagates, as np.mean does).
  std::map<std::string, std::map<std::string, double>> means;  // label key sorted as strings
  for (int32_t label : summary.labels)
    for (const auto& name : metric_names())
      means[std::to_string(label)][name] = mean_std_over_cases(summary, label, name).mean;
  std::map<std::string, double> foreground;
  for (const auto& name : metric_names()) {
    double sum = 0;
    int n = 0;
    for (int32_t label : summary.labels) {
      if (label == 0) continue;
      sum += means[std::to_string(label)][name];
      ++n;
    }
    foreground[name] = n ? sum / n : kNaN;
  }

  Json root;
  root["foreground_mean"] = metrics_json(nullptr, &foreground);
  Json names = Json::object();
  for (const auto& [k, v] : summary.label_names) names[std::to_string(k)] = v;
  root["iris"] = {{"label_names", names},
                  {"surface", "foreground voxels with a 6-neighbour outside"},
                  {"tolerance_mm", number(summary.tolerance_mm)}};
  root["mean"] = Json::object();
  for (const auto& [key, values] : means) root["mean"][key] = metrics_json(nullptr, &values);
  root["metric_per_case"] = Json::array();
  for (const auto& cr : summary.cases) {
    Json metrics = Json::object();
    for (const auto& m : cr.labels) metrics[std::to_string(m.label)] = metrics_json(&m, nullptr);
    root["metric_per_case"].push_back(
        {{"metrics", metrics}, {"prediction_file", cr.files.prediction_file}, {"reference_file", cr.files.reference_file}});
  }
  // NaN where a metric is undefined, as nnU-Net's (Python) summary.json has it.
  return dump(root, 4, true);
}

std::string metrics_csv(const EvaluationSummary& summary) {
  std::string out = "case,reference_file,prediction_file,label,label_name";
  for (const auto& name : metric_names()) out += "," + name;
  out += "\n";
  for (const auto& c : summary.cases)
    for (const auto& m : c.labels) {
      auto name = summary.label_names.find(m.label);
      out += csv_quoted(c.files.case_name) + "," + csv_quoted(c.files.reference_file) + "," +
             csv_quoted(c.files.prediction_file) + "," + std::to_string(m.label) + "," +
             csv_quoted(name != summary.label_names.end() ? name->second : "");
      for (const auto& metric : metric_names()) {
        const double v = metric_value(m, metric);
        out += "," + (is_count_metric(metric) ? std::to_string(static_cast<int64_t>(v))
                                              : python_number(v));
      }
      out += "\n";
    }
  return out;
}

std::string console_table(const EvaluationSummary& summary) {
  const std::vector<std::pair<std::string, int>> shown{
      {"Dice", 4}, {"IoU", 4}, {"HD95", 2}, {"HD", 2}, {"ASSD", 2}, {"NSD", 4}};
  std::ostringstream s;
  s << std::left << std::setw(7) << "label" << std::setw(16) << "name" << std::setw(7) << "cases";
  for (const auto& [name, digits] : shown)
    s << std::setw(20)
      << (name == "NSD" ? "NSD@" + fixed(summary.tolerance_mm, 1) + "mm"
                        : (name == "Dice" || name == "IoU" ? name : name + " mm"));
  s << "\n";
  for (int32_t label : summary.labels) {
    auto it = summary.label_names.find(label);
    s << std::setw(7) << label << std::setw(16)
      << (it != summary.label_names.end() ? it->second.substr(0, 15) : "");
    s << std::setw(7) << mean_std_over_cases(summary, label, "Dice").count;
    for (const auto& [name, digits] : shown) {
      const MeanStd v = mean_std_over_cases(summary, label, name);
      s << std::setw(20) << (fixed(v.mean, digits) + " ± " + fixed(v.std, digits));
    }
    s << "\n";
  }
  s << "(mean ± std over cases with a defined value; 'cases' counts cases with a defined Dice)\n";
  return s.str();
}

std::vector<int32_t> parse_label_list(const std::string& text) {
  std::vector<int32_t> labels;
  for (long v : parse_label_values(text, "labels")) labels.push_back(static_cast<int32_t>(v));
  return labels;
}

std::map<int32_t, std::string> read_label_names(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path, "cannot open label names file");
  std::map<int32_t, std::string> names;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto split = line.find_first_of(" \t,", first);
    int32_t value = 0;
    auto [ptr, ec] = std::from_chars(line.data() + first,
                                     line.data() + (split == std::string::npos ? line.size() : split), value);
    if (ec != std::errc() || split == std::string::npos)
      throw Error(path + ":" + std::to_string(line_number), "expected '<value> <name>'");
    std::string name = line.substr(line.find_first_not_of(" \t,", split));
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
    names[value] = name;
  }
  return names;
}

}  // namespace iris::eval
