#include "iris/data/dataset.h"

#include <cctype>
#include <cstdlib>
#include <cmath>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/json.h"

namespace fs = std::filesystem;

namespace iris::data {
namespace {



// The "labels" table of a dataset.json: v2 {"name": value} (or a list of
// values: a region made of several labels, not a class of its own) or
// MSD/v1 {"value": "name"}.
std::map<long, std::string> read_dataset_json_labels(const std::string& path) {
  const Json doc = read_json_file(path);
  if (!doc.is_object() || !doc.contains("labels") || !doc["labels"].is_object())
    throw Error(path, "dataset.json has no \"labels\" table");
  std::map<long, std::string> out;
  for (const auto& [key, value] : doc["labels"].items()) {
    if (value.is_number_integer()) {
      const long v = parse_label_key(std::to_string(value.get<long>()), path + ": label '" + key + "'");
      if (!out.emplace(v, key).second) throw Error(path, "label value " + std::to_string(v) + " has two names");  // v2: "liver": 1
    } else if (value.is_string()) {
      const bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); });
      if (!digits && !(key.size() > 1 && key[0] == '-'))
        throw Error(path, "label key '" + key + "' is neither a name with an integer value nor an integer");
      out[parse_label_key(key, path)] = value.get<std::string>();  // v1/MSD: "1": "liver"
    } else if (!value.is_array()) {
      throw Error(path, "label '" + key + "' has a value that is neither an integer, a name nor a list of integers");
    }
  }
  out.erase(0);  // background is not a task
  return out;
}

void find_folder_cases(DatasetSpec& d, bool nnunet) {
  const fs::path images = fs::path(d.root) / "imagesTr", labels = fs::path(d.root) / "labelsTr";
  if (!fs::is_directory(images)) throw Error(images.string(), "folder missing for dataset '" + d.name + "'");
  if (!fs::is_directory(labels)) throw Error(labels.string(), "folder missing for dataset '" + d.name + "'");
  if (d.class_names.empty()) d.class_names = read_dataset_json_labels((fs::path(d.root) / "dataset.json").string());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(images))
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& file : names) {
    if (!has_image_extension(file)) continue;
    const std::string stem = case_name(file);
    const std::string ext = file.substr(stem.size());
    std::string name = stem;
    if (nnunet) {
      // Channel files are NAME_XXXX; iris uses channel 0.
      static const std::regex channel("(.*)_([0-9]{4})$");
      std::smatch m;
      if (!std::regex_match(stem, m, channel)) throw Error((images / file).string(), "nnU-Net image without a _XXXX channel suffix");
      if (m[2] != "0000") continue;
      name = m[1];
    }
    const fs::path label = labels / (name + ext);
    if (!fs::exists(label)) throw Error((images / file).string(), "has no label map " + label.string());
    d.cases.push_back({name, (images / file).string(), label.string()});
  }
  if (d.cases.empty()) throw Error(images.string(), "no training cases found");
}

}  // namespace

const std::vector<std::string>& dataset_keys() {
  static const std::vector<std::string> known{"layout",     "root",       "modality",          "intensity",
                                              "weight",     "classes",    "cases",             "split",
                                              "split_seed", "tasks",      "held_out",          "union_max",
                                              "union_probability",        "min_region_voxels", "synthetic_images",
                                              "deformation_voxels",       "held_out_anatomy",  "held_out_anatomy_values",
                                              "held_out_anatomy_fraction"};
  return known;
}

std::vector<DatasetSpec> datasets_from_config(const ConfigMap& data_config, const RecordedDatasets& recorded) {
  ConfigMap all = data_config.subtree("datasets");
  std::set<std::string> names;
  for (const auto& [k, v] : all.entries()) names.insert(k.substr(0, k.find('.')));
  if (names.empty()) throw Error("data.datasets", "no dataset declared");
  const auto& known = dataset_keys();
  std::vector<DatasetSpec> out;
  for (const auto& name : names) {
    ConfigMap c = all.subtree(name);
    reject_unknown_keys(c, known, "dataset '" + name + "'");
    DatasetSpec d;
    d.name = name;
    if (c.has("layout")) d.layout = c.get("layout");
    if (c.has("root")) d.root = c.get("root");
    if (c.has("modality")) d.modality = c.get("modality");
    if (c.has("intensity")) d.intensity = c.get("intensity");
    if (c.has("weight")) d.weight = config_double(c, "weight");
    if (c.has("split_seed")) d.split_seed = config_int(c, "split_seed");
    const std::string key = "data.datasets." + name;
    if (c.has("tasks")) {
      const std::string tasks = c.get("tasks");
      if (tasks != "classes" && tasks != "regions")
        throw Error(key + ".tasks", "unknown task kind '" + tasks + "' (known: classes, regions)");
      d.regions.enabled = tasks == "regions";
    }
    for (const char* k : {"held_out", "union_max", "union_probability", "min_region_voxels", "synthetic_images",
                          "deformation_voxels", "held_out_anatomy", "held_out_anatomy_values", "held_out_anatomy_fraction"})
      if (c.has(k) && !d.regions.enabled) throw Error(key + "." + k, "applies to 'tasks: regions' datasets only");
    if (c.has("held_out")) d.regions.held_out = config_int_list(c, "held_out");
    if (c.has("union_max")) d.regions.union_max = config_int(c, "union_max");
    if (c.has("union_probability")) d.regions.union_probability = config_double(c, "union_probability");
    if (c.has("min_region_voxels")) d.regions.min_voxels = config_int(c, "min_region_voxels");
    if (c.has("synthetic_images")) d.regions.synthetic = config_double(c, "synthetic_images");
    if (c.has("deformation_voxels")) d.regions.deformation = config_double(c, "deformation_voxels");
    if (d.regions.union_max < 1) throw Error(key + ".union_max", "must be at least 1");
    for (double p : {d.regions.union_probability, d.regions.synthetic})
      if (p < 0 || p > 1) throw Error(key, "union_probability and synthetic_images are probabilities in [0, 1]");
    if (d.regions.deformation < 0) throw Error(key + ".deformation_voxels", "must be >= 0");
    if (c.has("held_out_anatomy")) {
      d.regions.held_out_anatomy = c.get("held_out_anatomy");
      if (d.regions.held_out_anatomy.empty()) throw Error(key + ".held_out_anatomy", "is empty (a label map file)");
      if (!d.root.empty()) d.regions.held_out_anatomy = (fs::path(d.root) / d.regions.held_out_anatomy).string();
      if (!c.has("held_out_anatomy_values"))
        throw Error(key + ".held_out_anatomy", "needs held_out_anatomy_values: the label values of the anatomy to hold out");
      d.regions.held_out_anatomy_values = config_int_list(c, "held_out_anatomy_values");
      if (d.regions.held_out_anatomy_values.empty()) throw Error(key + ".held_out_anatomy_values", "is empty");
      if (c.has("held_out_anatomy_fraction")) d.regions.held_out_anatomy_fraction = config_double(c, "held_out_anatomy_fraction");
      const double f = d.regions.held_out_anatomy_fraction;
      if (!(f > 0 && f <= 1)) throw Error(key + ".held_out_anatomy_fraction", "must be in (0, 1]");
    } else {
      for (const char* k : {"held_out_anatomy_values", "held_out_anatomy_fraction"})
        if (c.has(k)) throw Error(key + "." + k, "applies with held_out_anatomy only");
    }
    if (c.has("split")) {
      auto parts = config_list_items(c.get("split"));
      if (parts.size() != 3) throw Error("data.datasets." + name + ".split", "needs [train, val, test] fractions");
      double total = 0;
      for (int i = 0; i < 3; ++i) {
        char* end = nullptr;
        d.split[i] = std::strtod(parts[i].c_str(), &end);
        if (parts[i].empty() || *end != '\0' || !std::isfinite(d.split[i]) || d.split[i] < 0)
          throw Error("data.datasets." + name + ".split", "'" + parts[i] + "' is not a fraction >= 0");
        total += d.split[i];
      }
      if (total <= 0) throw Error("data.datasets." + name + ".split", "the fractions are all 0");
    }
    if (c.has("classes"))
      for (const auto& item : config_list_items(c.get("classes"))) {
        const auto colon = item.find(':');
        if (colon == std::string::npos) throw Error("data.datasets." + name + ".classes", "expected VALUE:NAME items, got '" + item + "'");
        const long v = parse_label_key(item.substr(0, colon), "data.datasets." + name + ".classes");
        if (!d.class_names.emplace(v, item.substr(colon + 1)).second)
          throw Error("data.datasets." + name + ".classes", "label " + std::to_string(v) + " is listed twice");
      }
    if (d.layout == "list") {
      if (!c.has("cases")) throw Error("data.datasets." + name, "a list dataset needs 'cases: [image|labels, ...]'");
      for (const auto& item : config_list_items(c.get("cases"))) {
        const auto bar = item.find('|');
        if (bar == std::string::npos) throw Error("data.datasets." + name + ".cases", "expected image|labels, got '" + item + "'");
        CaseSpec cs{case_name(fs::path(item.substr(0, bar)).filename().string()), item.substr(0, bar), item.substr(bar + 1)};
        if (!d.root.empty()) {
          cs.image = (fs::path(d.root) / cs.image).string();
          cs.labels = (fs::path(d.root) / cs.labels).string();
        }
        d.cases.push_back(cs);
      }
      // One image with several label maps (atlases of one brain): name each
      // case by both, so that names stay unique.
      std::map<std::string, int> seen;
      for (const auto& cs : d.cases) ++seen[cs.name];
      for (auto& cs : d.cases)
        if (seen[cs.name] > 1) cs.name += "__" + case_name(fs::path(cs.labels).filename().string());
    } else if (d.layout == "nnunet" || d.layout == "msd") {
      if (d.root.empty()) throw Error("data.datasets." + name, "needs 'root'");
      std::optional<RecordedDataset> r;
      if (!fs::is_directory(d.root) && recorded) r = recorded(name);
      if (r) {
        // Raw data absent (e.g. a GPU machine with a carried cache).
        d.cases = r->cases;
        if (d.class_names.empty()) d.class_names = r->class_names;
      } else {
        find_folder_cases(d, d.layout == "nnunet");
      }
    } else {
      throw Error("data.datasets." + name + ".layout", "unknown layout '" + d.layout + "' (known: list, nnunet, msd)");
    }
    make_split(d);
    out.push_back(d);
  }
  return out;
}

void make_split(DatasetSpec& d) {
  std::vector<CaseSpec> cases = d.cases;
  std::sort(cases.begin(), cases.end(), [](const CaseSpec& a, const CaseSpec& b) { return a.name < b.name; });
  std::mt19937_64 rng(static_cast<uint64_t>(d.split_seed) * 1000003ULL + 17);
  std::shuffle(cases.begin(), cases.end(), rng);
  const double total = d.split[0] + d.split[1] + d.split[2];
  const size_t n = cases.size();
  size_t n_val = static_cast<size_t>(std::round(n * d.split[1] / total));
  size_t n_test = static_cast<size_t>(std::round(n * d.split[2] / total));
  if (d.split[0] == 0) {
    // No training fraction (held-out cases, a validation-only dataset): none
    // of its cases trains, whatever the rounding.
    n_val = std::min(n_val, n);
    n_test = n - n_val;
  } else if (n > 0 && n_val + n_test >= n) {
    // Rounding left no training case: one case trains, validation and test
    // give up the rest (the larger share first).
    while (n_val + n_test > n - 1) (n_val >= n_test ? n_val : n_test) -= 1;
  }
  d.train.assign(cases.begin(), cases.end() - n_val - n_test);
  d.val.assign(cases.end() - n_val - n_test, cases.end() - n_test);
  d.test.assign(cases.end() - n_test, cases.end());
}

void write_split(const DatasetSpec& d, const std::string& path) {
  std::ostringstream f;
  for (const auto& c : d.train) f << "train\t" << c.name << "\n";
  for (const auto& c : d.val) f << "val\t" << c.name << "\n";
  for (const auto& c : d.test) f << "test\t" << c.name << "\n";
  write_text_file(path, f.str());
}

std::vector<std::string> class_table(const std::vector<DatasetSpec>& datasets) {
  std::vector<std::string> names;
  for (const auto& d : datasets)
    for (const auto& [value, name] : d.class_names)
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  return names;
}

}  // namespace iris::data
