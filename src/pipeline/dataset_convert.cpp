#include "iris/pipeline/dataset_convert.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <cstring>
#include <cctype>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/common/label_list.h"
#include "iris/data/class_vocabulary.h"
#include "iris/io/image_io.h"
#include "iris/common/file_names.h"
#include "iris/common/shipped_data.h"
#include "raw_folder.h"

namespace iris::pipeline {

namespace fs = std::filesystem;

namespace {

using detail::RawFolder;
using detail::Source;

// ------------------------------------------------------------------ finding

// Every entry under `root` (any depth), sorted, for which `match` holds.
std::vector<fs::path> find_all(const fs::path& root, const std::function<bool(const fs::directory_entry&)>& match) {
  std::vector<fs::path> out;
  for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it)
    if (match(*it)) out.push_back(it->path());
  std::sort(out.begin(), out.end());
  return out;
}

bool hidden(const fs::path& p) {
  const std::string n = p.filename().string();
  return n.empty() || n[0] == '.' || n[0] == '_';  // MSD tars hold "._x.nii.gz" AppleDouble files
}

std::string stem_of(const fs::path& p) {
  std::string n = p.filename().string();
  for (const char* ext : {".nii.gz", ".nii"})
    if (n.size() > std::strlen(ext) && n.compare(n.size() - std::strlen(ext), std::strlen(ext), ext) == 0)
      return n.substr(0, n.size() - std::strlen(ext));
  return n;
}

// "a/b.nii.gz" or "a/b.nii", whichever exists ("" when neither).
std::string nifti_file(const fs::path& folder, const std::string& stem) {
  for (const char* ext : {".nii.gz", ".nii"})
    if (fs::is_regular_file(folder / (stem + ext))) return (folder / (stem + ext)).string();
  return "";
}

bool under(const fs::path& p, const std::string& folder_name) {
  for (const auto& part : p)
    if (part == folder_name) return true;
  return false;
}

std::string sanitise(const std::string& text) {
  std::string out;
  for (char c : text) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '_';
  std::string collapsed;
  for (char c : out)
    if (!(c == '_' && !collapsed.empty() && collapsed.back() == '_')) collapsed += c;
  return collapsed;
}

Json read_json(const fs::path& path) { return read_json_file(path.string()); }

// Rows of a delimited text file (quotes around fields allowed).
std::vector<std::vector<std::string>> read_table(const fs::path& path, char delimiter) {
  std::ifstream in(path);
  if (!in) throw Error(path.string(), "cannot open");
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (rows.empty() && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line = line.substr(3);
    std::vector<std::string> fields;
    std::string field;
    bool quoted = false;
    for (char c : line) {
      if (c == '"') quoted = !quoted;
      else if (c == delimiter && !quoted) fields.push_back(field), field.clear();
      else field += c;
    }
    fields.push_back(field);
    rows.push_back(fields);
  }
  return rows;
}

long column(const std::vector<std::string>& header, const std::string& name, const fs::path& file) {
  for (size_t i = 0; i < header.size(); ++i)
    if (header[i] == name) return static_cast<long>(i);
  throw Error(file.string(), "has no column '" + name + "'");
}

// One 3-D volume of a 4-D image (t or channel), with the image's geometry.
Image volume_of(const Image& four_d, long index, bool labels) {
  Image out;
  out.geometry = four_d.geometry;
  out.source = four_d.source;
  out.voxels = four_d.voxels[index].contiguous();
  if (labels) out.voxels = narrow_labels(out.voxels.round().to(at::kLong));
  return out;
}

Image read_four_d(const std::string& path) {
  io::ImageReadOptions o;
  o.components = true;
  return io::read_image(path, o);
}

std::string vocabulary_path(const ConvertOptions& o) {
  return o.class_vocabulary.empty() ? shipped_path("configs/classes.yaml") : o.class_vocabulary;
}

// Names read from a source, made canonical; a name the vocabulary does not
// know stays (normalised), with a note.
std::vector<std::string> canonical_names(const std::map<long, std::string>& by_value, const ConvertOptions& o,
                                         const std::function<std::string(const std::string&)>& special = {}) {
  const auto vocabulary = data::ClassVocabulary::load(vocabulary_path(o));
  long highest = 0;
  for (const auto& [v, n] : by_value) highest = std::max(highest, v);
  std::vector<std::string> names(static_cast<size_t>(highest + 1));
  names[0] = "background";
  std::set<std::string> used;
  for (const auto& [v, n] : by_value) {
    if (v == 0) continue;
    std::string c = special ? special(n) : "";
    if (c.empty()) c = vocabulary.canonical(n);
    if (c.empty()) {
      c = data::ClassVocabulary::normalise(n);
      if (o.note) o.note("class '" + n + "' is not in the class vocabulary: kept as '" + c + "'");
    } else if (c != data::ClassVocabulary::normalise(n) && o.note) {
      // Say so when a name changes (MSD's "Anterior" is the hippocampus'),
      // so that nobody wonders where the dataset's own name went.
      o.note("class '" + n + "' is named '" + c + "' (label " + std::to_string(v) + ", class vocabulary)");
    }
    if (!used.insert(c).second) c += "_" + std::to_string(v);
    names[static_cast<size_t>(v)] = c;
  }
  return names;
}

void require_any(const std::vector<fs::path>& found, const std::string& source, const std::string& expected) {
  if (found.empty()) throw Error(source, "does not look like this dataset: expected " + expected + " somewhere under it");
}

// ------------------------------------------------------------------ formats

ConvertSummary kits(const std::string& src, const std::string& dst, bool kits23, const ConvertOptions& o) {
  RawFolder out(dst, kits23 ? "kits23" : "kits19");
  out.set_channels({"CT"});
  out.set_labels(kits23 ? std::vector<std::string>{"background", "kidney", "kidney_tumor", "kidney_cyst"}
                        : std::vector<std::string>{"background", "kidney", "kidney_tumor"});
  static const std::regex case_dir("case_([0-9]{5})");
  const auto cases = find_all(src, [](const fs::directory_entry& e) {
    return e.is_directory() && std::regex_match(e.path().filename().string(), case_dir);
  });
  require_any(cases, src, "case folders case_00000/ with imaging.nii.gz");
  long images = 0;
  for (const auto& c : cases) {
    const std::string id = c.filename().string();
    const long number = std::stol(id.substr(5));
    const fs::path image = c / "imaging.nii.gz", label = c / "segmentation.nii.gz";
    if (!fs::exists(image)) {
      if (o.note)
        o.note(image.string() + " missing: the imaging is downloaded separately (" +
               std::string(kits23 ? "kits23_download_data" : "python3 -m starter_code.get_imaging") + "); case skipped");
      continue;
    }
    ++images;
    // KiTS19: cases 0-209 are training (with labels), 210-299 test.
    const bool training = fs::exists(label) && (kits23 || number < 210);
    if (training) out.add_training(id, {{image.string()}}, {label.string()});
    else out.add_test(id, {{image.string()}});
  }
  if (images == 0)
    throw Error(src, "holds case folders but no imaging.nii.gz: download the imaging first (see iris-data download " +
                         std::string(kits23 ? "kits23" : "kits19") + ")");
  return out.finish(kits23 ? "KiTS23" : "KiTS19", src);
}

ConvertSummary acdc(const std::string& src, const std::string& dst, const ConvertOptions&) {
  RawFolder out(dst, "acdc");
  out.set_channels({"cineMRI"});
  out.set_labels({"background", "right_ventricle", "myocardium", "left_ventricle"});
  static const std::regex patient("patient[0-9]{3}");
  static const std::regex frame("(patient[0-9]{3}_frame[0-9]{2})");
  const auto patients = find_all(src, [](const fs::directory_entry& e) {
    return e.is_directory() && std::regex_match(e.path().filename().string(), patient) && fs::exists(e.path() / "Info.cfg");
  });
  require_any(patients, src, "patient folders patientNNN/ with Info.cfg");
  for (const auto& p : patients) {
    const bool testing = under(p, "testing");
    for (const auto& f : find_all(p, [](const fs::directory_entry& e) { return e.is_regular_file(); })) {
      const std::string stem = stem_of(f);
      if (!std::regex_match(stem, frame)) continue;  // _gt, _4d, Info.cfg, ...
      const std::string gt = nifti_file(p, stem + "_gt");
      // ED and ES frames are separate cases; the 4-D cine is not used.
      if (!testing) {
        if (gt.empty()) throw Error(f.string(), "training frame without its " + stem + "_gt.nii.gz");
        out.add_training(stem, {{f.string()}}, {gt});
      } else {
        out.add_test(stem, {{f.string()}});
      }
    }
  }
  return out.finish("ACDC", src);
}

ConvertSummary msd(const std::string& src, const std::string& dst, const ConvertOptions& o) {
  // A task folder: dataset.json in MSD's own form (with a "training" list;
  // an nnU-Net v2 copy has none and is not a source).
  auto is_root = [](const fs::path& p) {
    if (!fs::is_regular_file(p / "dataset.json") || !fs::is_directory(p / "imagesTr")) return false;
    std::ifstream in(p / "dataset.json");
    const Json doc = Json::parse(in, nullptr, false);
    return !doc.is_discarded() && doc.contains("training");
  };
  auto roots = find_all(src, [&](const fs::directory_entry& e) { return e.is_directory() && is_root(e.path()); });
  if (is_root(src)) roots.insert(roots.begin(), src);
  require_any(roots, src, "a TaskNN_Name/ folder with dataset.json, imagesTr/, labelsTr/");
  if (roots.size() > 1) throw Error(src, "holds several MSD tasks (" + roots[0].string() + ", " + roots[1].string() + "): convert one at a time");
  const fs::path root = roots[0];
  const Json doc = read_json(root / "dataset.json");
  if (!doc.contains("modality") || !doc.contains("labels") || !doc.contains("training"))
    throw Error((root / "dataset.json").string(), "is not an MSD dataset.json (needs modality, labels, training)");
  if (!doc["training"].is_array() || !doc["labels"].is_object() || !doc["modality"].is_object())
    throw Error((root / "dataset.json").string(), "is not an MSD dataset.json (training is a list, labels and modality "
                                                  "are tables)");
  std::vector<std::string> channels;
  const std::string json_file = (root / "dataset.json").string();
  for (long c = 0; doc["modality"].contains(std::to_string(c)); ++c) {
    const Json& name = doc["modality"][std::to_string(c)];
    if (!name.is_string()) throw Error(json_file, "modality: channel " + std::to_string(c) + " is not named by a string");
    channels.push_back(name.get<std::string>());
  }
  std::map<long, std::string> names;
  for (const auto& [k, v] : doc["labels"].items()) {
    if (!v.is_string()) throw Error(json_file, "labels: the name of label " + k + " is not a string");
    names[parse_label_key(k, json_file + ": labels")] = v.get<std::string>();
  }
  // Files a dataset.json lists lie inside its task folder.
  auto listed = [&](const Json& entry, const char* key) {
    const Json& value = entry.is_string() ? entry : entry.contains(key) ? entry[key] : Json();
    if (!value.is_string()) throw Error(json_file, std::string("an entry of the file lists has no \"") + key + "\" path");
    const fs::path path = root / fs::path(value.get<std::string>()).lexically_normal();
    if (fs::path(value.get<std::string>()).is_absolute() || !lies_inside(root.string(), path.string()))
      throw Error(json_file, "lists " + value.get<std::string>() + ", which lies outside the task folder " + root.string());
    return path;
  };
  // "cancer" and "tumour" mean the task's organ's tumour.
  const std::string task = root.filename().string();
  auto special = [&](const std::string& n) -> std::string {
    const std::string l = data::ClassVocabulary::normalise(n);
    if (l != "cancer" && l != "tumour" && l != "tumor") return "";
    if (task.find("Liver") != std::string::npos || task.find("HepaticVessel") != std::string::npos) return "liver_tumor";
    if (task.find("Pancreas") != std::string::npos) return "pancreas_tumor";
    if (task.find("Lung") != std::string::npos) return "lung_tumor";
    return "";
  };
  RawFolder out(dst, "msd");
  out.set_channels(channels);
  out.set_labels(canonical_names(names, o, special));
  auto channels_of = [&](const fs::path& file) -> std::vector<Source> {
    if (channels.size() <= 1) return {{file.string()}};
    const Image four_d = read_four_d(file.string());
    if (four_d.voxels.dim() != 4 || four_d.voxels.size(0) != static_cast<long>(channels.size()))
      throw Error(file.string(), "should hold " + std::to_string(channels.size()) + " channels (dataset.json modality)");
    std::vector<Source> out_channels;
    for (long c = 0; c < four_d.voxels.size(0); ++c) out_channels.push_back({"", volume_of(four_d, c, false)});
    return out_channels;
  };
  for (const auto& entry : doc["training"]) {
    const fs::path image = listed(entry, "image");
    const fs::path label = listed(entry, "label");
    if (hidden(image)) continue;
    if (!fs::exists(image)) throw Error(image.string(), "listed in dataset.json but missing");
    if (!fs::exists(label)) throw Error(label.string(), "listed in dataset.json but missing");
    out.add_training(stem_of(image), channels_of(image), {label.string()});
  }
  if (doc.contains("test"))
    for (const auto& entry : doc["test"]) {
      const fs::path image = listed(entry, "image");
      if (hidden(image) || !fs::exists(image)) continue;
      out.add_test(stem_of(image), channels_of(image));
    }
  return out.finish(task, src);
}

ConvertSummary amos(const std::string& src, const std::string& dst, bool mr, const ConvertOptions& o) {
  // The AMOS folder: dataset.json, imagesTr/amos_XXXX.nii.gz (an nnU-Net
  // copy has amos_XXXX_0000.nii.gz instead and is not a source).
  static const std::regex amos_file("amos_[0-9]{4}");
  auto is_root = [](const fs::path& p) {
    if (!fs::exists(p / "dataset.json") || !fs::is_directory(p / "imagesTr") || !fs::is_directory(p / "labelsTr")) return false;
    for (const auto& f : fs::directory_iterator(p / "imagesTr"))
      if (std::regex_match(stem_of(f.path()), amos_file)) return true;
    return false;
  };
  auto roots = find_all(src, [&](const fs::directory_entry& e) { return e.is_directory() && is_root(e.path()); });
  if (is_root(src)) roots.insert(roots.begin(), src);
  require_any(roots, src, "the amos22/ folder with dataset.json, imagesTr/, labelsTr/ (amos_XXXX.nii.gz)");
  const fs::path root = roots[0];
  const Json doc = read_json(root / "dataset.json");
  if (!doc.contains("labels")) throw Error((root / "dataset.json").string(), "has no labels table");
  std::map<long, std::string> names;
  for (const auto& [k, v] : doc["labels"].items()) {
    const std::string where = (root / "dataset.json").string() + ": labels";
    if (v.is_string()) names[parse_label_key(k, where)] = v.get<std::string>();  // AMOS: "1": "spleen"
    else if (v.is_number_integer()) names[parse_label_key(std::to_string(v.get<long>()), where)] = k;
  }
  RawFolder out(dst, mr ? "amos22_mr" : "amos22");
  out.set_channels({mr ? "MRI" : "CT"});
  out.set_labels(canonical_names(names, o));
  static const std::regex amos_id("amos_([0-9]{4})");
  // CT scans have ids below 500, MRI 500 and above (the dataset's readme).
  auto wanted = [&](const std::string& stem) {
    std::smatch m;
    if (!std::regex_match(stem, m, amos_id)) return false;
    return (std::stol(m[1]) >= 500) == mr;
  };
  for (const auto& [images, labels] : {std::pair<std::string, std::string>{"imagesTr", "labelsTr"}, {"imagesVa", "labelsVa"}}) {
    if (!fs::is_directory(root / images)) continue;
    for (const auto& f : find_all(root / images, [](const fs::directory_entry& e) { return e.is_regular_file(); })) {
      if (hidden(f) || !wanted(stem_of(f))) continue;
      const std::string label = nifti_file(root / labels, stem_of(f));
      if (label.empty()) throw Error(f.string(), "has no label map in " + (root / labels).string());
      out.add_training(stem_of(f), {{f.string()}}, {label});
    }
  }
  if (fs::is_directory(root / "imagesTs"))
    for (const auto& f : find_all(root / "imagesTs", [](const fs::directory_entry& e) { return e.is_regular_file(); }))
      if (!hidden(f) && wanted(stem_of(f))) out.add_test(stem_of(f), {{f.string()}});
  return out.finish(mr ? "AMOS22 MRI" : "AMOS22 CT", src);
}

ConvertSummary segthor(const std::string& src, const std::string& dst, const ConvertOptions&) {
  RawFolder out(dst, "segthor");
  out.set_channels({"CT"});
  out.set_labels({"background", "esophagus", "heart", "trachea", "aorta"});
  const auto gts = find_all(src, [](const fs::directory_entry& e) {
    const std::string n = e.path().filename().string();
    return e.is_regular_file() && (n == "GT.nii.gz" || n == "GT.nii");
  });
  require_any(gts, src, "train/Patient_01/GT.nii.gz next to Patient_01.nii.gz");
  for (const auto& gt : gts) {
    const fs::path folder = gt.parent_path();
    const std::string image = nifti_file(folder, folder.filename().string());
    if (image.empty()) throw Error(gt.string(), "has no image " + folder.filename().string() + ".nii.gz next to it");
    out.add_training(sanitise(folder.filename().string()), {{image}}, {gt.string()});
  }
  for (const auto& f : find_all(src, [](const fs::directory_entry& e) { return e.is_regular_file(); })) {
    if (f.parent_path().filename() != "test" || hidden(f)) continue;
    if (stem_of(f) == f.filename().string()) continue;  // not NIfTI
    out.add_test(sanitise(stem_of(f)), {{f.string()}});
  }
  return out.finish("SegTHOR", src);
}

ConvertSummary bcv(const std::string& src, const std::string& dst, const ConvertOptions&) {
  RawFolder out(dst, "bcv");
  out.set_channels({"CT"});
  out.set_labels({"background", "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach",
                  "aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
                  "adrenal_gland_left"});
  static const std::regex img("img([0-9]{4})");
  const auto images = find_all(src, [](const fs::directory_entry& e) {
    return e.is_regular_file() && std::regex_match(stem_of(e.path()), img) && e.path().parent_path().filename() == "img";
  });
  require_any(images, src, "RawData/Training/img/img0001.nii.gz with RawData/Training/label/label0001.nii.gz");
  for (const auto& f : images) {
    const std::string digits = stem_of(f).substr(3);
    const fs::path label_folder = f.parent_path().parent_path() / "label";
    const std::string label = nifti_file(label_folder, "label" + digits);
    if (!label.empty()) out.add_training("bcv_" + digits, {{f.string()}}, {label});
    else if (fs::is_directory(label_folder)) throw Error(f.string(), "has no label" + digits + ".nii.gz in " + label_folder.string());
    else out.add_test("bcv_" + digits, {{f.string()}});
  }
  return out.finish("BCV abdomen (Synapse)", src);
}

ConvertSummary mnms(const std::string& src, const std::string& dst, const ConvertOptions&) {
  RawFolder out(dst, "mnms");
  out.set_channels({"cineMRI"});
  out.set_labels({"background", "left_ventricle", "myocardium", "right_ventricle"});
  // ED and ES (0-based time indices) per External code, from the
  // information CSV.
  const auto tables = find_all(src, [](const fs::directory_entry& e) {
    return e.is_regular_file() && e.path().extension() == ".csv";
  });
  std::map<std::string, std::pair<long, long>> frames;
  for (const auto& t : tables) {
    const auto rows = read_table(t, ',');
    if (rows.empty() || std::find(rows[0].begin(), rows[0].end(), "External code") == rows[0].end()) continue;
    const long code = column(rows[0], "External code", t), ed = column(rows[0], "ED", t), es = column(rows[0], "ES", t);
    for (size_t r = 1; r < rows.size(); ++r) {
      if (rows[r].size() <= static_cast<size_t>(std::max({code, ed, es})) || rows[r][code].empty()) continue;
      try {
        frames[rows[r][code]] = {std::stol(rows[r][ed]), std::stol(rows[r][es])};
      } catch (const std::exception&) {
        throw Error(t.string(), "row " + std::to_string(r + 1) + ": ED/ES are not whole numbers");
      }
    }
  }
  if (frames.empty())
    throw Error(src, "does not look like M&Ms: expected the information CSV with columns 'External code', 'ED', 'ES'");
  const auto cines = find_all(src, [](const fs::directory_entry& e) {
    const std::string s = stem_of(e.path());
    return e.is_regular_file() && s.size() > 3 && s.compare(s.size() - 3, 3, "_sa") == 0;
  });
  require_any(cines, src, "Training/Labeled/CODE/CODE_sa.nii.gz");
  for (const auto& f : cines) {
    const std::string stem = stem_of(f), code = stem.substr(0, stem.size() - 3);
    const auto it = frames.find(code);
    if (it == frames.end()) throw Error(f.string(), "case " + code + " is not in the information CSV");
    const Image cine = read_four_d(f.string());
    const std::string gt = nifti_file(f.parent_path(), stem + "_gt");
    std::optional<Image> labels;
    if (!gt.empty()) labels = read_four_d(gt);
    for (long t : {it->second.first, it->second.second}) {
      if (cine.voxels.dim() != 4 || t < 0 || t >= cine.voxels.size(0))
        throw Error(f.string(), "has no time frame " + std::to_string(t) + " (ED/ES of the CSV)");
      char id[64];
      std::snprintf(id, sizeof id, "%s_frame%02ld", code.c_str(), t);
      Source image{"", volume_of(cine, t, false)};
      if (labels) out.add_training(id, {image}, Source{"", volume_of(*labels, t, true)});
      else out.add_test(id, {image});
    }
  }
  return out.finish("M&Ms", src);
}

ConvertSummary autopet(const std::string& src, const std::string& dst, const ConvertOptions&) {
  RawFolder out(dst, "autopet");
  out.set_channels({"CT", "PET"});
  out.set_labels({"background", "fdg_avid_lesion"});
  const auto studies = find_all(src, [](const fs::directory_entry& e) {
    return e.is_directory() && fs::exists(e.path() / "SEG.nii.gz") && fs::exists(e.path() / "SUV.nii.gz") &&
           fs::exists(e.path() / "CTres.nii.gz");
  });
  require_any(studies, src, "FDG-PET-CT-Lesions/PETCT_xxx/<study>/ with CTres.nii.gz, SUV.nii.gz, SEG.nii.gz");
  for (const auto& s : studies) {
    // Patient and study folder (a date and a description, with spaces).
    const std::string id = sanitise(s.parent_path().filename().string() + "_" + s.filename().string());
    out.add_training(id, {{(s / "CTres.nii.gz").string()}, {(s / "SUV.nii.gz").string()}}, {(s / "SEG.nii.gz").string()});
  }
  return out.finish("AutoPET FDG-PET-CT-Lesions", src);
}

ConvertSummary totalsegmentator(const std::string& src, const std::string& dst, const ConvertOptions& o) {
  static const std::regex subject("s[0-9]{4}");
  const auto subjects = find_all(src, [](const fs::directory_entry& e) {
    return e.is_directory() && std::regex_match(e.path().filename().string(), subject) &&
           fs::is_directory(e.path() / "segmentations") &&
           (fs::exists(e.path() / "ct.nii.gz") || fs::exists(e.path() / "mri.nii.gz"));
  });
  require_any(subjects, src, "sXXXX/ct.nii.gz with sXXXX/segmentations/*.nii.gz");
  // Splits from meta.csv (';'-separated: image_id, split).
  std::map<std::string, std::string> split;
  const auto metas = find_all(src, [](const fs::directory_entry& e) { return e.path().filename() == "meta.csv"; });
  if (!metas.empty()) {
    const auto rows = read_table(metas[0], ';');
    if (!rows.empty()) {
      const long id = column(rows[0], "image_id", metas[0]), sp = column(rows[0], "split", metas[0]);
      for (size_t r = 1; r < rows.size(); ++r)
        if (rows[r].size() > static_cast<size_t>(std::max(id, sp))) split[rows[r][id]] = rows[r][sp];
    }
  } else if (o.note) {
    o.note("no meta.csv: every subject is a training case");
  }
  // Classes: the mask names of the first subject, sorted (value = index + 1).
  std::vector<std::string> masks;
  for (const auto& f : find_all(subjects[0] / "segmentations", [](const fs::directory_entry& e) { return e.is_regular_file(); }))
    if (!hidden(f)) masks.push_back(stem_of(f));
  if (masks.empty()) throw Error((subjects[0] / "segmentations").string(), "holds no masks");
  std::map<long, std::string> names;
  for (size_t i = 0; i < masks.size(); ++i) names[static_cast<long>(i) + 1] = masks[i];
  RawFolder out(dst, "totalsegmentator");
  const bool mri = fs::exists(subjects[0] / "mri.nii.gz");
  out.set_channels({mri ? "MRI" : "CT"});
  out.set_labels(canonical_names(names, o));
  for (const auto& s : subjects) {
    const std::string image = (s / (mri ? "mri.nii.gz" : "ct.nii.gz")).string();
    const Image grid = io::read_image(image);
    Image labels;
    labels.geometry = grid.geometry;
    labels.voxels = at::zeros(grid.voxels.sizes(), masks.size() < 256 ? at::kByte : at::kShort);
    for (size_t i = 0; i < masks.size(); ++i) {
      const std::string mask = nifti_file(s / "segmentations", masks[i]);
      if (mask.empty()) continue;  // a structure this subject lacks
      const Image m = io::read_labels(mask);
      if (!m.geometry.same_grid(grid.geometry))
        throw Error(mask, "is not on the grid of " + image + " (" + m.geometry.describe() + " vs " + grid.geometry.describe() + ")");
      labels.voxels.masked_fill_(m.voxels > 0, static_cast<long>(i) + 1);  // later masks win, as the official converter
    }
    const std::string id = s.filename().string();
    const auto it = split.find(id);
    if (it != split.end() && it->second == "test") out.add_test(id, {{image}}, Source{"", labels});
    else out.add_training(id, {{image}}, Source{"", labels});
  }
  return out.finish(mri ? "TotalSegmentator MRI" : "TotalSegmentator", src);
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& dataset_formats() {
  static const std::vector<std::pair<std::string, std::string>> formats{
      {"amos22", "AMOS22 CT scans (ids < 500): imagesTr + imagesVa -> training, imagesTs -> test"},
      {"amos22_mr", "AMOS22 MRI scans (ids >= 500)"},
      {"kits19", "KiTS19 git clone with imaging downloaded: cases 0-209 training, 210-299 test"},
      {"kits23", "KiTS23 git clone with imaging downloaded: kidney, tumor, cyst"},
      {"msd", "a Medical Segmentation Decathlon task folder (TaskNN_Name); 4-D images split into channels"},
      {"acdc", "ACDC (database/training, database/testing): ED and ES frames as separate cases"},
      {"segthor", "SegTHOR (train/Patient_XX/GT.nii.gz, test/)"},
      {"bcv", "BCV / Synapse multi-atlas abdomen, 13 organs (RawData/Training/img, label)"},
      {"mnms", "M&Ms-1: ED and ES frames of the 4-D cines (from the information CSV) as separate cases"},
      {"autopet", "AutoPET FDG-PET-CT-Lesions (NIfTI): CTres + SUV as two channels, lesion labels"},
      {"totalsegmentator", "TotalSegmentator: one mask file per structure merged into one label map"},
  };
  return formats;
}

ConvertSummary convert_dataset(const std::string& format, const std::string& source, const std::string& destination,
                               const ConvertOptions& options) {
  bool known = false;
  std::string list;
  for (const auto& [name, what] : dataset_formats()) {
    known |= name == format;
    list += (list.empty() ? "" : ", ") + name;
  }
  if (!known) throw Error("FORMAT", "unknown format '" + format + "' (known: " + list + ")");
  if (!fs::is_directory(source)) throw Error(source, "source folder not found");
  if (format == "kits19" || format == "kits23") return kits(source, destination, format == "kits23", options);
  if (format == "acdc") return acdc(source, destination, options);
  if (format == "msd") return msd(source, destination, options);
  if (format == "amos22" || format == "amos22_mr") return amos(source, destination, format == "amos22_mr", options);
  if (format == "segthor") return segthor(source, destination, options);
  if (format == "bcv") return bcv(source, destination, options);
  if (format == "mnms") return mnms(source, destination, options);
  if (format == "autopet") return autopet(source, destination, options);
  return totalsegmentator(source, destination, options);
}

std::string download_instructions(const std::string& format) {
  std::ostringstream s;
  if (format == "msd") {
    static const std::vector<std::pair<std::string, std::string>> tasks{
        {"Task01_BrainTumour", "240a19d752f0d9e9101544901065d872"}, {"Task02_Heart", "06ee59366e1e5124267b774dbd654057"},
        {"Task03_Liver", "a90ec6c4aa7f6a3d087205e23d4e6397"},       {"Task04_Hippocampus", "9d24dba78a72977dbd1d2e110310f31b"},
        {"Task05_Prostate", "35138f08b1efaef89d7424d2bcc928db"},    {"Task06_Lung", "8afd997733c7fc0432f71255ba4e52dc"},
        {"Task07_Pancreas", "4f7080cfca169fa8066d17ce6eb061e4"},    {"Task08_HepaticVessel", "641d79e80ec66453921d997fbf12a29c"},
        {"Task09_Spleen", "410d4a301da4e5b2f6f86ec3ddba524e"},      {"Task10_Colon", "bad7a188931dc2f6acf72b08eb6202d0"}};
    s << "Medical Segmentation Decathlon (http://medicaldecathlon.com), licence CC BY-SA 4.0.\n"
      << "Mirror used by MONAI (md5 as MONAI's DecathlonDataset checks it):\n";
    for (const auto& [task, md5] : tasks)
      s << "  curl -LO https://msd-for-monai.s3-us-west-2.amazonaws.com/" << task << ".tar   # md5 " << md5 << "\n";
    s << "then: tar xf TaskNN_Name.tar && iris-data convert msd TaskNN_Name DatasetNNN_Name\n";
  } else if (format == "kits19") {
    s << "KiTS19 (https://github.com/neheller/kits19), data licence CC BY-NC-SA 4.0 (see its README).\n"
      << "  git clone https://github.com/neheller/kits19 && cd kits19 && pip3 install -r requirements.txt\n"
      << "  python3 -m starter_code.get_imaging   # downloads data/case_XXXXX/imaging.nii.gz (tens of GB)\n"
      << "then: iris-data convert kits19 kits19 Dataset040_KiTS19\n";
  } else if (format == "kits23") {
    s << "KiTS23 (https://github.com/neheller/kits23), data licence CC BY-NC-SA 4.0 (see its README).\n"
      << "  git clone https://github.com/neheller/kits23 && cd kits23 && pip3 install -e .\n"
      << "  kits23_download_data   # downloads dataset/case_XXXXX/imaging.nii.gz\n"
      << "then: iris-data convert kits23 kits23 Dataset220_KiTS23\n";
  } else {
    bool known = false;
    for (const auto& [name, what] : dataset_formats()) known |= name == format;
    if (!known) throw Error("FORMAT", "unknown format '" + format + "' (iris-data convert --help lists them)");
    const std::map<std::string, std::string> where{
        {"amos22", "https://amos22.grand-challenge.org (registration)"},
        {"amos22_mr", "https://amos22.grand-challenge.org (registration)"},
        {"acdc", "https://www.creatis.insa-lyon.fr/Challenge/acdc (registration; CC BY-NC-SA 4.0)"},
        {"segthor", "https://competitions.codalab.org/competitions/21012 (registration)"},
        {"bcv", "https://www.synapse.org/#!Synapse:syn3193805 (Synapse account; terms of use on the page)"},
        {"mnms", "https://www.ub.edu/mnms (registration form)"},
        {"autopet", "https://www.cancerimagingarchive.net (FDG-PET-CT-Lesions, TCIA licence); convert the DICOM with the "
                    "autoPET repository's tcia2nifti.py first"},
        {"totalsegmentator", "https://github.com/wasserth/TotalSegmentator (links to the Zenodo record of each release)"}};
    s << format << ": no stable public URL that a tool may fetch; download it from " << where.at(format)
      << ", unpack it, then run iris-data convert " << format << " SRC DST.\n";
  }
  return s.str();
}

}  // namespace iris::pipeline
