#include "iris/pipeline/dataset_check.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <cstdio>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/io/image_io.h"

namespace iris::pipeline {

namespace fs = std::filesystem;

namespace {

struct Case {
  std::map<long, std::string> channels;  // channel index -> file
  std::string label;
};

// The name of a dataset file without `ending`; nullopt for hidden files and
// for files of another ending (a problem then).
std::optional<std::string> stem_with_ending(const fs::directory_entry& e, const std::string& ending,
                                            std::vector<DatasetProblem>& problems) {
  const std::string name = e.path().filename().string();
  if (name.empty() || name[0] == '.') return std::nullopt;
  if (name.size() <= ending.size() || name.compare(name.size() - ending.size(), ending.size(), ending) != 0) {
    problems.push_back({e.path().string(), "does not end with the dataset's file_ending " + ending});
    return std::nullopt;
  }
  return name.substr(0, name.size() - ending.size());
}

// CASE_XXXX<ending> files of an images folder, by case.
std::map<std::string, Case> channel_files(const fs::path& folder, const std::string& ending,
                                          std::vector<DatasetProblem>& problems) {
  std::map<std::string, Case> cases;
  if (!fs::is_directory(folder)) return cases;
  static const std::regex channel("(.+)_([0-9]{4})$");
  for (const auto& e : fs::directory_iterator(folder)) {
    if (!e.is_regular_file()) continue;
    const auto stem = stem_with_ending(e, ending, problems);
    if (!stem) continue;
    std::smatch m;
    if (!std::regex_match(*stem, m, channel)) {
      problems.push_back({e.path().string(), "image without the _XXXX channel suffix (CASE_0000" + ending + ")"});
      continue;
    }
    cases[m[1]].channels[std::stol(m[2])] = e.path().string();
  }
  return cases;
}

std::string grid_text(const Geometry& g) { return g.describe(); }

std::string channel_file(const std::string& id, long channel, const std::string& ending) {
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "_%04ld", channel);
  return id + suffix + ending;
}

}  // namespace

DatasetSummary verify_raw_dataset(const std::string& folder, const std::function<void(long, long)>& progress) {
  DatasetSummary out;
  auto& problems = out.problems;
  const fs::path root(folder);
  if (!fs::is_directory(root)) {
    problems.push_back({folder, "folder not found"});
    return out;
  }
  // dataset.json
  const fs::path json_path = root / "dataset.json";
  Json doc;
  if (!fs::exists(json_path)) {
    problems.push_back({json_path.string(), "missing"});
    return out;
  }
  try {
    doc = read_json_file(json_path.string());
  } catch (const Error& e) {
    problems.push_back({json_path.string(), e.reason()});
    return out;
  }
  std::set<long> declared;
  bool labels_ok = doc.is_object() && doc.contains("labels") && doc["labels"].is_object();
  // Cases whose label maps are empty on purpose (iris-rsna prepare's series
  // without an aneurysm): "iris_negative_cases": [ids].
  std::set<std::string> negative_cases;
  if (doc.is_object() && doc.contains("iris_negative_cases")) {
    if (!doc["iris_negative_cases"].is_array()) problems.push_back({json_path.string(), "iris_negative_cases is not a list of case ids"});
    else
      for (const auto& n : doc["iris_negative_cases"])
        if (n.is_string()) negative_cases.insert(n.get<std::string>());
  }
  if (!labels_ok) {
    problems.push_back({json_path.string(), "has no \"labels\" table"});
  } else {
    for (const auto& [name, value] : doc["labels"].items()) {
      if (value.is_number_integer()) {
        declared.insert(value.get<long>());
      } else if (value.is_array()) {  // a region: several labels
        for (const auto& v : value)
          if (v.is_number_integer()) declared.insert(v.get<long>());
      } else {
        problems.push_back({json_path.string(), "label '" + name + "' is not an integer (nnU-Net v2: \"name\": value)"});
      }
    }
    if (!declared.count(0)) problems.push_back({json_path.string(), "declares no background (\"background\": 0)"});
  }
  if (!doc.contains("channel_names") || !doc["channel_names"].is_object() || doc["channel_names"].empty()) {
    problems.push_back({json_path.string(), "has no \"channel_names\" (e.g. {\"0\": \"CT\"})"});
  } else {
    out.channels = static_cast<long>(doc["channel_names"].size());
    for (long c = 0; c < out.channels; ++c)
      if (!doc["channel_names"].contains(std::to_string(c)))
        problems.push_back({json_path.string(), "channel_names lacks channel \"" + std::to_string(c) + "\""});
  }
  std::string ending = ".nii.gz";
  if (!doc.contains("file_ending") || !doc["file_ending"].is_string())
    problems.push_back({json_path.string(), "has no \"file_ending\" (e.g. \".nii.gz\")"});
  else
    ending = doc["file_ending"].get<std::string>();
  long declared_training = -1;
  if (!doc.contains("numTraining") || !doc["numTraining"].is_number_integer())
    problems.push_back({json_path.string(), "has no integer \"numTraining\""});
  else
    declared_training = doc["numTraining"].get<long>();

  // Files.
  const fs::path images = root / "imagesTr", labels = root / "labelsTr", test_images = root / "imagesTs";
  if (!fs::is_directory(images)) problems.push_back({images.string(), "folder missing"});
  if (!fs::is_directory(labels)) problems.push_back({labels.string(), "folder missing"});
  auto cases = channel_files(images, ending, problems);
  if (fs::is_directory(labels))
    for (const auto& e : fs::directory_iterator(labels)) {
      if (!e.is_regular_file()) continue;
      const auto stem = stem_with_ending(e, ending, problems);
      if (!stem) continue;
      const std::string id = *stem;
      if (!cases.count(id)) problems.push_back({e.path().string(), "label map without an image (imagesTr/" + id + "_0000" + ending + ")"});
      else cases[id].label = e.path().string();
    }
  out.training_cases = static_cast<long>(cases.size());
  if (declared_training >= 0 && declared_training != out.training_cases)
    problems.push_back({json_path.string(), "numTraining is " + std::to_string(declared_training) + " but imagesTr holds " +
                                                std::to_string(out.training_cases) + " cases"});
  auto tests = channel_files(test_images, ending, problems);
  out.test_cases = static_cast<long>(tests.size());

  auto check_channels = [&](const std::string& id, const Case& c, const fs::path& where) {
    for (long ch = 0; ch < out.channels; ++ch)
      if (!c.channels.count(ch))
        problems.push_back({(where / channel_file(id, ch, ending)).string(),
                            "missing (channel " + std::to_string(ch) + " of case " + id + ")"});
    for (const auto& [ch, file] : c.channels)
      if (out.channels > 0 && ch >= out.channels)
        problems.push_back({file, "channel " + std::to_string(ch) + " is not in channel_names"});
  };

  const long total = out.training_cases + out.test_cases;
  long done = 0;
  for (const auto& [id, c] : cases) {
    check_channels(id, c, images);
    if (c.label.empty()) problems.push_back({(labels / (id + ending)).string(), "missing (the label map of case " + id + ")"});
    // Voxels: readable, finite, on one grid, declared label values.
    std::optional<Geometry> grid;
    std::string grid_file;
    for (const auto& [ch, file] : c.channels) {
      try {
        const Image image = io::read_image(file);
        if (!grid) {
          grid = image.geometry;
          grid_file = file;
        } else if (!grid->same_grid(image.geometry)) {
          problems.push_back({file, "not on the grid of " + grid_file + " (" + grid_text(image.geometry) + " vs " +
                                        grid_text(*grid) + ")"});
        }
      } catch (const Error& e) {
        problems.push_back({file, e.reason()});
      }
    }
    if (!c.label.empty()) {
      try {
        const Image map = io::read_labels(c.label);
        if (grid && !grid->same_grid(map.geometry))
          problems.push_back({c.label, "not on the grid of its image " + grid_file + " (" + grid_text(map.geometry) +
                                           " vs " + grid_text(*grid) + ")"});
        const at::Tensor values = std::get<0>(at::_unique(map.voxels.reshape({-1})));
        std::string undeclared;
        for (long i = 0; i < values.numel(); ++i) {
          const long v = values[i].item<long>();
          if (labels_ok && !declared.count(v)) undeclared += (undeclared.empty() ? "" : ", ") + std::to_string(v);
        }
        if (!undeclared.empty()) problems.push_back({c.label, "label value(s) " + undeclared + " not declared in dataset.json"});
        if (declared.size() > 1 && values.numel() == 1 && values[0].item<long>() == 0 && !negative_cases.count(id))
          problems.push_back({c.label, "is empty (only background) although dataset.json declares classes"});
      } catch (const Error& e) {
        problems.push_back({c.label, e.reason()});
      }
    }
    if (progress) progress(++done, total);
  }
  for (const auto& [id, c] : tests) {
    check_channels(id, c, test_images);
    for (const auto& [ch, file] : c.channels) {
      try {
        io::read_image(file);
      } catch (const Error& e) {
        problems.push_back({file, e.reason()});
      }
    }
    if (progress) progress(++done, total);
  }
  return out;
}

}  // namespace iris::pipeline
