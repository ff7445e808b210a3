#include "iris/common/label_list.h"

#include "iris/common/text.h"

#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"

namespace iris {

namespace {


long whole(const std::string& text, const std::string& item, const std::string& where) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 9)
    throw SettingError(where, "'" + item + "' is not a label value or range (whole numbers >= 0, e.g. 1,3,5-7)");
  return std::stol(text);
}

std::pair<long, long> range(const std::string& item, const std::string& where) {
  const std::string t = trim(item);
  const auto dash = t.find('-', 1);
  const long low = whole(trim(t.substr(0, dash)), item, where);
  const long high = dash == std::string::npos ? low : whole(trim(t.substr(dash + 1)), item, where);
  if (high < low) throw SettingError(where, "range " + t + " is empty (write LO-HI with LO <= HI)");
  return {low, high};
}

}  // namespace

std::vector<std::string> split_comma_list(const std::string& text, bool keep_empty) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = trim(text.substr(start, comma - start));
    if (keep_empty || !item.empty()) out.push_back(item);
    start = comma + 1;
  }
  return out;
}

std::vector<long> parse_label_values(const std::string& text, const std::string& where) {
  std::vector<long> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto [low, high] = range(item, where);
    if (high - low > 100000) throw SettingError(where, "range " + trim(item) + " is too long");
    for (long v = low; v <= high; ++v) out.push_back(v);
  }
  if (out.empty()) throw SettingError(where, "no label values given");
  return out;
}

std::vector<LabelMapping> parse_label_mapping(const std::string& text, const std::string& where) {
  std::vector<LabelMapping> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto colon = item.find(':');
    if (colon == std::string::npos) throw SettingError(where, "expected LO-HI:NEW or V:NEW, got '" + item + "'");
    const auto [low, high] = range(item.substr(0, colon), where);
    out.push_back({low, high, whole(trim(item.substr(colon + 1)), item, where)});
  }
  if (out.empty()) throw SettingError(where, "no mapping given");
  return out;
}

at::Tensor narrow_labels(const at::Tensor& voxels, long highest) {
  if (highest < 0) highest = voxels.numel() ? voxels.max().item<long>() : 0;
  return voxels.to(highest < 256 ? at::kByte : highest < 32768 ? at::kShort : at::kInt);
}

}  // namespace iris
