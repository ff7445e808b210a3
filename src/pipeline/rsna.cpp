#include "iris/pipeline/rsna.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/csv.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/common/text.h"
#include "iris/data/dataset.h"
#include "iris/eval/rsna.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
#include "raw_folder.h"

namespace iris::pipeline {

namespace fs = std::filesystem;

namespace {

// Column name -> index; iris::Error naming the file for each missing one.
std::map<std::string, size_t> columns_of(const eval::CsvTable& table, const std::vector<std::string>& required) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < table.header.size(); ++i) index.emplace(eval::csv_field(table.header[i]), i);
  for (const auto& r : required)
    if (!index.count(r)) throw Error(table.source, "has no column '" + r + "'");
  return index;
}

std::string where_of(const eval::CsvTable& t, size_t row) {
  return t.source + ":" + std::to_string(t.line_of_row[row]);
}

long location_of(const std::string& name, const std::string& where) {
  const auto& columns = eval::rsna_label_columns();
  for (size_t i = 0; i + 1 < columns.size(); ++i)
    if (columns[i] == name) return static_cast<long>(i) + 1;
  std::string known;
  for (size_t i = 0; i + 1 < columns.size(); ++i) known += (i ? ", " : "") + columns[i];
  throw Error(where, "unknown location '" + name + "' (known: " + known + ")");
}

bool is_ct(const std::string& modality) {
  return to_upper(modality).rfind("CT", 0) == 0;
}

// Continuous voxel index (x, y, z) of patient point `p` on `g`.
std::array<double, 3> index_of(const Geometry& g, const std::array<double, 3>& p) {
  // M = D * diag(spacing); solve M i = p - origin (Cramer's rule: D need not be orthonormal).
  double m[3][3];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) m[r][c] = g.direction[r * 3 + c] * g.spacing[c];
  const double d[3] = {p[0] - g.origin[0], p[1] - g.origin[1], p[2] - g.origin[2]};
  auto det = [](const double a[3][3]) {
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  };
  const double full = det(m);
  if (std::abs(full) < 1e-12) throw Error("geometry", "singular direction matrix");
  std::array<double, 3> out{};
  for (int c = 0; c < 3; ++c) {
    double a[3][3];
    for (int r = 0; r < 3; ++r)
      for (int k = 0; k < 3; ++k) a[r][k] = k == c ? d[r] : m[r][k];
    out[c] = det(a) / full;
  }
  return out;
}

// Paints a ball of `radius` mm around patient point `p` with `value` into
// `labels` [Z, Y, X] (uint8) on geometry `g`; the voxels painted.
long paint_sphere(at::Tensor& labels, const Geometry& g, const std::array<double, 3>& p, double radius, uint8_t value) {
  const auto c = index_of(g, p);
  long lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    // The direction's columns are unit vectors: radius / spacing voxels along each axis.
    const double reach = radius / g.spacing[a] + 1;
    lo[a] = std::max<long>(0, static_cast<long>(std::floor(c[a] - reach)));
    hi[a] = std::min<long>(g.size[a] - 1, static_cast<long>(std::ceil(c[a] + reach)));
  }
  auto acc = labels.accessor<uint8_t, 3>();
  long painted = 0;
  for (long z = lo[2]; z <= hi[2]; ++z)
    for (long y = lo[1]; y <= hi[1]; ++y)
      for (long x = lo[0]; x <= hi[0]; ++x) {
        double d2 = 0;
        const double di[3] = {(x - c[0]) * g.spacing[0], (y - c[1]) * g.spacing[1], (z - c[2]) * g.spacing[2]};
        for (int r = 0; r < 3; ++r) {
          double v = 0;
          for (int k = 0; k < 3; ++k) v += g.direction[r * 3 + k] * di[k];
          d2 += v * v;
        }
        if (d2 <= radius * radius) {
          acc[z][y][x] = value;
          ++painted;
        }
      }
  return painted;
}

struct TrainRow {
  std::string uid, modality, where;
};

// A localizer made ready: its patient-space point.
struct Point {
  std::array<double, 3> position{};
  long location = 0;
  std::string where;
};

std::string stem(const fs::path& p) {
  std::string n = p.filename().string();
  for (const char* ext : {".nii.gz", ".nii"}) {
    const std::string e(ext);
    if (n.size() > e.size() && n.compare(n.size() - e.size(), e.size(), e) == 0) return n.substr(0, n.size() - e.size());
  }
  return n;
}

}  // namespace

void parse_rsna_coordinates(const std::string& text, const std::string& where, double& x, double& y, long& frame) {
  const std::string t = eval::csv_field(text);
  auto bad = [&](const std::string& why) {
    return Error(where, "coordinates '" + text + "' " + why + " (expected e.g. {'x': 258.36, 'y': 261.37}, with 'f': N "
                        "for a multi-frame file)");
  };
  if (t.size() < 2 || t.front() != '{' || t.back() != '}') throw bad("is not a {...} dict");
  std::map<std::string, double> values;
  std::stringstream body(t.substr(1, t.size() - 2));
  std::string item;
  while (std::getline(body, item, ',')) {
    const auto colon = item.find(':');
    if (colon == std::string::npos) throw bad("has an entry without ':'");
    std::string key = eval::csv_field(item.substr(0, colon));
    if (key.size() < 3 || (key.front() != '\'' && key.front() != '"') || key.back() != key.front())
      throw bad("has an unquoted key");
    key = key.substr(1, key.size() - 2);
    if (key != "x" && key != "y" && key != "f") throw bad("has the unknown key '" + key + "'");
    double v = 0;
    if (!eval::csv_number(item.substr(colon + 1), v)) throw bad("has a value of '" + key + "' that is not a number");
    if (!values.emplace(key, v).second) throw bad("names '" + key + "' twice");
  }
  if (!values.count("x") || !values.count("y")) throw bad("lacks 'x' or 'y'");
  x = values["x"];
  y = values["y"];
  frame = -1;
  if (values.count("f")) {
    const double f = values["f"];
    if (f < 0 || f != std::floor(f)) throw bad("has a frame 'f' that is not a whole number >= 0");
    frame = static_cast<long>(f);
  }
}

std::vector<RsnaLocalizer> read_rsna_localizers(const std::string& csv_path) {
  const eval::CsvTable table = eval::read_csv(csv_path);
  auto c = columns_of(table, {"SeriesInstanceUID", "SOPInstanceUID", "coordinates", "location"});
  std::vector<RsnaLocalizer> out;
  for (size_t r = 0; r < table.rows.size(); ++r) {
    const auto& row = table.rows[r];
    const std::string where = where_of(table, r);
    if (row.size() != table.header.size())
      throw Error(where, "has " + std::to_string(row.size()) + " fields, the header " + std::to_string(table.header.size()));
    RsnaLocalizer l;
    l.series = eval::csv_field(row[c["SeriesInstanceUID"]]);
    l.sop = eval::csv_field(row[c["SOPInstanceUID"]]);
    if (l.series.empty() || l.sop.empty()) throw Error(where, "empty SeriesInstanceUID or SOPInstanceUID");
    parse_rsna_coordinates(row[c["coordinates"]], where, l.x, l.y, l.frame);
    l.location = location_of(eval::csv_field(row[c["location"]]), where);
    l.line = table.line_of_row[r];
    out.push_back(l);
  }
  return out;
}

RsnaPrepareSummary rsna_prepare(const std::string& data, const std::string& output, const RsnaPrepareOptions& options) {
  if (!(options.radius_mm > 0) || !std::isfinite(options.radius_mm)) throw SettingError("radius_mm", "must be > 0");
  const fs::path root(data);
  if (!fs::is_directory(root)) throw Error(data, "folder not found");
  for (const char* need : {"train.csv", "train_localizers.csv"})
    if (!fs::is_regular_file(root / need)) throw Error(data, std::string("has no ") + need + " (the challenge's folder?)");
  if (!fs::is_directory(root / "series")) throw Error(data, "has no series/ folder (the challenge's folder?)");
  const auto& columns = eval::rsna_label_columns();

  // 1. train.csv: the series and their modalities.
  const eval::CsvTable train = eval::read_csv((root / "train.csv").string());
  auto tc = columns_of(train, {"SeriesInstanceUID", "Modality"});
  std::vector<TrainRow> rows;
  std::set<std::string> known;
  for (size_t r = 0; r < train.rows.size(); ++r) {
    TrainRow t{eval::csv_field(train.rows[r][tc["SeriesInstanceUID"]]), eval::csv_field(train.rows[r][tc["Modality"]]), where_of(train, r)};
    if (t.uid.empty()) throw Error(t.where, "empty SeriesInstanceUID");
    if (safe_path_component(t.uid) != t.uid)
      throw Error(t.where, "SeriesInstanceUID '" + t.uid +
                               "' cannot name a case folder (it is '.' or '..', starts with '.', or holds '/', '\\' "
                               "or control characters)");
    if (!known.insert(t.uid).second) throw Error(t.where, "series " + t.uid + " appears twice");
    if (!fs::is_directory(root / "series" / t.uid))
      throw Error(t.where, "series " + t.uid + " has no folder " + (root / "series" / t.uid).string());
    rows.push_back(t);
  }
  if (rows.empty()) throw Error(train.source, "lists no series");
  for (const auto& e : fs::directory_iterator(root / "series"))
    if (e.is_directory() && !known.count(e.path().filename().string()) && options.note)
      options.note("series folder " + e.path().string() + " is not in train.csv: left out");

  // 2. Localizers -> patient-space points, all checked before any volume is read.
  std::map<std::string, std::vector<Point>> points;
  long spheres = 0;
  for (const auto& l : read_rsna_localizers((root / "train_localizers.csv").string())) {
    const std::string where = (root / "train_localizers.csv").string() + ":" + std::to_string(l.line);
    if (!known.count(l.series)) throw Error(where, "series " + l.series + " is not in train.csv");
    std::string file;
    try {
      file = io::find_dicom_instance((root / "series" / l.series).string(), l.sop);
    } catch (const Error& e) {
      throw Error(where, std::string("SOP instance ") + l.sop + " not found: " + e.what());
    }
    const long frame = l.frame < 0 ? 0 : l.frame - options.frame_base;
    Point p;
    try {
      p.position = io::dicom_pixel_position(file, l.x, l.y, frame);
    } catch (const Error& e) {
      throw Error(where, e.what());
    }
    p.location = l.location;
    p.where = where;
    points[l.series].push_back(p);
    ++spheres;
  }

  // 3. Volumes and label maps, into temporary raw folders.
  std::vector<std::string> label_names{"background"};
  for (size_t i = 0; i + 1 < columns.size(); ++i) label_names.push_back(columns[i]);
  fs::create_directories(output);
  std::optional<detail::RawFolder> ct, mr, vessels;
  std::map<std::string, std::vector<std::string>> names;  // folder name -> cases
  Json modalities = Json::object();
  auto folder_for = [&](const std::string& modality) -> detail::RawFolder& {
    auto& slot = is_ct(modality) ? ct : mr;
    if (!slot) {
      slot.emplace((fs::path(output) / (is_ct(modality) ? kRsnaCtDataset : kRsnaMrDataset)).string(), "rsna");
      slot->set_channels({is_ct(modality) ? "CT" : "MR"});
      slot->set_labels(label_names);
    }
    return *slot;
  };
  RsnaPrepareSummary summary;
  long done = 0;
  for (const auto& t : rows) {
    if (options.progress) options.progress(done, static_cast<long>(rows.size()), t.uid);
    const std::string folder = (root / "series" / t.uid).string();
    Image image = io::read_dicom_series(folder);
    for (const auto& w : image.warnings)
      if (options.note) options.note(folder + ": " + w);
    Image labels;
    labels.geometry = image.geometry;
    labels.voxels = at::zeros(image.voxels.sizes(), at::kByte);
    for (const auto& p : points[t.uid])
      if (paint_sphere(labels.voxels, image.geometry, p.position, options.radius_mm, static_cast<uint8_t>(p.location)) == 0)
        throw Error(p.where, "the point lies outside the series' volume (" + image.geometry.describe() + ")");
    detail::RawFolder& out = folder_for(t.modality);
    out.add_training(t.uid, {detail::Source{"", image}}, detail::Source{"", labels});
    names[is_ct(t.modality) ? kRsnaCtDataset : kRsnaMrDataset].push_back(t.uid);
    modalities[t.uid] = t.modality;
    ++summary.series;
    summary.positive_series += !points[t.uid].empty();
    ++done;
  }
  if (options.progress) options.progress(done, static_cast<long>(rows.size()), "");

  // 4. Vessel segmentations.
  const fs::path segmentations = root / "segmentations";
  if (fs::is_directory(segmentations)) {
    std::vector<fs::path> folders;
    for (const auto& e : fs::directory_iterator(segmentations))
      if (e.is_directory()) folders.push_back(e.path());
    std::sort(folders.begin(), folders.end());
    long max_label = 0;
    for (const auto& f : folders) {
      const std::string uid = f.filename().string();
      std::optional<fs::path> label_file, image_file;
      for (const auto& e : fs::directory_iterator(f)) {
        const std::string s = stem(e.path());
        if (s == e.path().filename().string()) continue;  // not NIfTI
        if (s.size() > 7 && s.compare(s.size() - 7, 7, "_cowseg") == 0) label_file = e.path();
        else if (s == uid) image_file = e.path();
      }
      if (!label_file) {
        if (options.note) options.note(f.string() + " holds no *_cowseg.nii[.gz]: left out");
        continue;
      }
      Image label = io::read_labels(label_file->string());
      Image image;
      if (image_file) {
        image = io::read_image(image_file->string());
      } else if (fs::is_directory(root / "series" / uid)) {
        image = io::read_dicom_series((root / "series" / uid).string());
      } else {
        throw Error(f.string(), "has a segmentation but no image (" + uid + ".nii.gz) and no series folder");
      }
      if (!label.geometry.same_grid(image.geometry, 1e-3))
        throw Error(label_file->string(), "is not on the grid of its image (" + label.geometry.describe() + " vs " +
                                               image.geometry.describe() + ")");
      max_label = std::max(max_label, label.voxels.max().item<long>());
      if (!vessels) {
        vessels.emplace((fs::path(output) / kRsnaVesselDataset).string(), "rsna");
        vessels->set_channels({"image"});
      }
      vessels->add_training(uid, {detail::Source{"", image}}, detail::Source{"", label});
      names[kRsnaVesselDataset].push_back(uid);
      ++summary.vessel_cases;
    }
    if (vessels) {
      // The challenge names no vessel classes in its files: by value.
      std::vector<std::string> vessel_names{"background"};
      for (long v = 1; v <= max_label; ++v) vessel_names.push_back("vessel " + std::to_string(v));
      vessels->set_labels(vessel_names);
    }
  }

  // 5. Splits, dataset.json, and every folder into place.
  auto finish = [&](std::optional<detail::RawFolder>& folder, const std::string& name) {
    if (!folder) return;
    data::DatasetSpec d;
    for (const auto& n : names[name]) d.cases.push_back({n, "", ""});
    d.split = options.split;
    d.split_seed = options.seed;
    data::make_split(d);
    std::string split;
    for (const auto& c : d.train) split += "train\t" + c.name + "\n";
    for (const auto& c : d.val) split += "val\t" + c.name + "\n";
    for (const auto& c : d.test) split += "test\t" + c.name + "\n";
    folder->add_text_file("split.tsv", split);
    folder->set_description("prepared by iris-rsna prepare from " + data);
    // Series without an aneurysm have empty label maps on purpose: declared,
    // so that iris-data verify takes them as negative cases.
    Json negatives = Json::array();
    if (name != kRsnaVesselDataset)
      for (const auto& n : names[name])
        if (points[n].empty()) negatives.push_back(n);
    folder->set_extra({{"iris_split", {{"fractions", {options.split[0], options.split[1], options.split[2]}},
                                       {"seed", options.seed}}},
                       {"iris_sphere_radius_mm", options.radius_mm},
                       {"iris_series_modality", modalities},
                       {"iris_negative_cases", negatives}});
    summary.folders.push_back(folder->finish(name, data).folder);
  };
  finish(ct, kRsnaCtDataset);
  finish(mr, kRsnaMrDataset);
  finish(vessels, kRsnaVesselDataset);
  summary.spheres = spheres;
  return summary;
}

// ------------------------------------------------------------------ predict

std::vector<double> rsna_series_scores(const infer::Segmentation& segmentation, const RsnaScoring& scoring,
                                       const std::vector<double>& priors) {
  const size_t n = eval::rsna_label_columns().size();
  if (priors.size() != n) throw Error("priors", "need " + std::to_string(n) + " values");
  if (scoring.smoothing < 1 || scoring.smoothing % 2 == 0) throw SettingError("smoothing", "must be an odd number >= 1");
  if (!(scoring.quantile > 0 && scoring.quantile <= 1)) throw SettingError("quantile", "must be in (0, 1]");
  if (scoring.present != "max" && scoring.present != "noisy-or" && scoring.present != "mean")
    throw SettingError("present", "'" + scoring.present + "' is not max, noisy-or or mean");
  std::vector<double> out = priors;
  std::vector<double> found;
  if (!segmentation.probabilities) return out;
  const at::Tensor& maps = segmentation.probabilities->voxels;  // [K, Z, Y, X]
  for (size_t k = 0; k < segmentation.label_values.size(); ++k) {
    const long v = segmentation.label_values[k];
    if (v < 1 || v > static_cast<long>(n) - 1) continue;
    at::Tensor m = maps[static_cast<long>(k)].to(at::kFloat);
    if (scoring.smoothing > 1)
      m = at::avg_pool3d(m.unsqueeze(0).unsqueeze(0), scoring.smoothing, 1, scoring.smoothing / 2, false, false)
              .squeeze(0)
              .squeeze(0);
    const at::Tensor flat = m.reshape({-1});
    double p = 0;
    if (scoring.quantile >= 1) {
      p = flat.max().item<double>();
    } else {
      const long rank = std::max<long>(1, static_cast<long>(std::ceil(scoring.quantile * flat.numel())));
      p = std::get<0>(at::kthvalue(flat, rank)).item<double>();
    }
    p = std::clamp(p, 0.0, 1.0);
    out[static_cast<size_t>(v - 1)] = p;
    found.push_back(p);
  }
  if (!found.empty()) {
    double present = 0;
    if (scoring.present == "max") {
      present = *std::max_element(found.begin(), found.end());
    } else if (scoring.present == "noisy-or") {
      double none = 1;
      for (double p : found) none *= 1 - p;
      present = 1 - none;
    } else {  // mean
      for (double p : found) present += p / found.size();
    }
    out[n - 1] = std::clamp(present, 0.0, 1.0);
  }
  return out;
}

RsnaPredictSummary rsna_predict(const std::string& series_root, const std::string& output_csv,
                                const RsnaPredictOptions& options) {
  const auto& columns = eval::rsna_label_columns();
  if (!fs::is_directory(series_root)) throw InputError(series_root, "folder not found (" + setting_ref("series") + ")");
  if (output_csv.empty()) throw SettingError("output", "is required");
  {
    const fs::path parent = fs::path(output_csv).parent_path();
    if (!parent.empty() && !fs::is_directory(parent)) throw Error(output_csv, "its folder does not exist");
  }
  // Checked before any model is loaded.
  rsna_series_scores({}, options.scoring, std::vector<double>(columns.size(), 0.5));

  std::vector<double> priors(columns.size(), 0.5);
  if (!options.train_csv.empty()) {
    const eval::CsvTable train = eval::read_csv(options.train_csv);
    auto c = columns_of(train, columns);
    if (train.rows.empty()) throw Error(options.train_csv, "has no rows");
    for (size_t j = 0; j < columns.size(); ++j) {
      double sum = 0;
      for (size_t r = 0; r < train.rows.size(); ++r) {
        double v = 0;
        if (!eval::csv_number(train.rows[r][c[columns[j]]], v) || (v != 0 && v != 1))
          throw Error(where_of(train, r), "column '" + columns[j] + "' must be 0 or 1");
        sum += v;
      }
      priors[j] = sum / train.rows.size();
    }
  }

  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(series_root))
    if (e.is_directory()) all.push_back(e.path().filename().string());
  std::sort(all.begin(), all.end());
  if (all.empty()) throw Error(series_root, "holds no series folder (expected SERIES/<SeriesInstanceUID>/*.dcm)");
  std::vector<std::string> uids;
  for (size_t i : infer::shard(all, options.num_parts, options.part_id)) uids.push_back(all[i]);
  std::sort(uids.begin(), uids.end());

  infer::SegmenterOptions so = options.segmenter;
  so.probabilities = true;
  if (options.models.empty()) throw SettingError("models", "is required");
  infer::Segmenter segmenter(options.models, options.task, so, options.model_weights);

  RsnaPredictSummary summary;
  Json per_series = Json::array();
  std::ostringstream csv;
  csv << eval::kRsnaSeriesColumn;
  for (const auto& c : columns) csv << "," << c;
  csv << "\n";
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < uids.size(); ++i) {
    const std::string& uid = uids[i];
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<double> scores;
    Json entry = {{"series", uid}};
    try {
      const Image image = io::read_image((fs::path(series_root) / uid).string());
      scores = rsna_series_scores(segmenter.segment(image, uid), options.scoring, priors);
    } catch (const std::exception& e) {
      scores = priors;
      entry["error"] = e.what();
      ++summary.failed;
    }
    ++summary.series;
    entry["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    entry["scores"] = scores;
    per_series.push_back(entry);
    csv << csv_quoted(uid);
    for (double s : scores) {
      char text[32];
      std::snprintf(text, sizeof text, ",%.6f", s);
      csv << text;
    }
    csv << "\n";
    if (options.progress) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      options.progress(static_cast<long>(i + 1), static_cast<long>(uids.size()), uid,
                       elapsed / (i + 1) * (uids.size() - i - 1));
    }
  }
  write_text_file(output_csv, csv.str());
  summary.report = {{"series", per_series},
                    {"failed", summary.failed},
                    {"priors", priors},
                    {"scoring",
                     {{"smoothing", options.scoring.smoothing},
                      {"quantile", options.scoring.quantile},
                      {"present", options.scoring.present}}},
                    {"part", {{"num_parts", options.num_parts}, {"part_id", options.part_id}}},
                    {"segmenter", segmenter.report()}};
  return summary;
}

}  // namespace iris::pipeline
