#include "iris/data/case_cache.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/label_list.h"

namespace fs = std::filesystem;

namespace iris::data {

namespace {

// Every label value present (sorted), one pass for 8-bit maps.
std::vector<long> values_present(const at::Tensor& labels) {
  std::vector<long> out;
  if (labels.scalar_type() == at::kByte) {
    const at::Tensor flat = labels.contiguous();
    const uint8_t* v = flat.data_ptr<uint8_t>();
    bool seen[256] = {};
    for (int64_t i = 0, n = flat.numel(); i < n; ++i) seen[v[i]] = true;
    for (int i = 0; i < 256; ++i)
      if (seen[i]) out.push_back(i);
    return out;
  }
  at::Tensor values = std::get<0>(at::_unique(labels.reshape({-1}).to(at::kLong)));
  const long* v = values.data_ptr<long>();
  out.assign(v, v + values.numel());
  return out;
}

std::vector<long> restrict_classes(const std::vector<long>& values, const DatasetSpec& d, const std::string& where) {
  std::vector<long> out;
  for (long v : values)
    if (v != 0 && (d.class_names.empty() || d.class_names.count(v))) out.push_back(v);
  if (out.empty()) throw Error(where, "label map has no labelled class");
  return out;
}

}  // namespace

std::vector<long> classes_present(const at::Tensor& labels, const DatasetSpec& d, const std::string& where) {
  return restrict_classes(values_present(labels), d, where);
}

namespace {

// Sizes and modification times of the raw files (a DICOM folder: of every
// file in it), so an entry can tell when the files it came from were
// rewritten. Not their absolute paths: the same data mounted elsewhere is
// the same data. "" where a file is absent here.
std::string source_fingerprint(const CaseSpec& c) {
  if (!fs::exists(c.image) || !fs::exists(c.labels)) return "";
  std::ostringstream s;
  auto add = [&](const fs::path& file, const fs::path& base) {
    s << fs::relative(file, base).string() << ' ' << fs::file_size(file) << ' '
      << fs::last_write_time(file).time_since_epoch().count() << '\n';
  };
  for (const std::string& input : {c.image, c.labels}) {
    if (fs::is_directory(input)) {
      std::vector<fs::path> files;
      for (const auto& f : fs::recursive_directory_iterator(input))
        if (f.is_regular_file()) files.push_back(f.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) add(f, input);
    } else {
      add(input, fs::path(input).parent_path());
    }
  }
  return VolumeCache::text_key(s.str());
}

// The value of one "tag: value" line of an entry's info text ("" if none).
std::string info_line(const std::string& info, const std::string& name) {
  const std::string tag = "\n" + name + ": ";
  const auto at = ("\n" + info).find(tag);
  if (at == std::string::npos) return "";
  const size_t from = at + tag.size() - 1;
  const auto end = info.find('\n', from);
  return info.substr(from, end == std::string::npos ? std::string::npos : end - from);
}

std::string recorded_fingerprint(const std::string& info) { return info_line(info, "source-fingerprint"); }

// The label values an entry recorded ("label-values: 0 1 2"), or nullopt
// for entries written before it was recorded.
std::optional<std::vector<long>> recorded_values(const std::string& info) {
  const std::string line = info_line(info, "label-values");
  if (line.empty()) return std::nullopt;
  std::istringstream in(line);
  std::vector<long> values;
  long v;
  while (in >> v) values.push_back(v);
  if (!in.eof()) return std::nullopt;
  return values;
}

std::string dataset_record_path(const std::string& folder, const std::string& dataset) {
  return (fs::path(folder) / "datasets" / (dataset + ".tsv")).string();
}

}  // namespace

CaseCache::CaseCache(const std::string& folder, std::string preprocess_text)
    : cache_(folder), preprocess_text_(std::move(preprocess_text)) {}

std::string CaseCache::key_for(const DatasetSpec& d, const CaseSpec& c) const {
  std::ostringstream s;
  s << "iris training case v1\ndataset: " << d.name << "\ncase: " << c.name << "\nimage: " << c.image
    << "\nlabels: " << c.labels << "\nmodality: " << d.modality << "\nintensity: " << d.intensity
    << "\npreprocess:\n"
    << preprocess_text_;
  return VolumeCache::text_key(s.str());
}

bool CaseCache::contains(const DatasetSpec& d, const CaseSpec& c) const { return cache_.contains(key_for(d, c)); }

CaseLoader CaseCache::loader(CaseLoader raw, std::function<void(const std::string&)> warn) const {
  return [this, raw = std::move(raw), warn = std::move(warn)](const DatasetSpec& d, const CaseSpec& c) {
    const std::string key = key_for(d, c);
    const std::string here = source_fingerprint(c);
    std::string rejection;
    std::optional<CachedVolume> hit;
    if (raw) {
      hit = cache_.get(key, &rejection, /*mapped*/ true);  // a damaged entry is removed and rebuilt below
    } else if (cache_.contains(key)) {
      // Nothing can rebuild it here: keep the file, whatever went wrong.
      try {
        hit = map_cached_volume(cache_.path_for(key));
      } catch (const Error& e) {
        throw Error(cache_.path_for(key), "cached case '" + c.name + "' cannot be read (" + e.reason() +
                                              ") and this build cannot preprocess it again: copy the cache again");
      }
    }
    if (hit) {
      const std::string then = recorded_fingerprint(hit->info);
      const bool stale = !here.empty() && here != then;
      if (!stale || !raw) {
        if (stale && warn)
          warn(cache_.path_for(key) + ": " + c.image + " changed since it was cached; using the cached case (no raw loader)");
        CaseVolume v;
        v.name = c.name;
        // Views of the mapped file: an episode reads only its patch's pages.
        v.image = hit->voxels.to(at::kFloat);
        if (!hit->labels) throw Error(cache_.path_for(key), "cached case has no labels");
        v.labels = *hit->labels;
        const auto values = recorded_values(hit->info);
        v.classes = restrict_classes(values ? *values : values_present(v.labels), d, cache_.path_for(key));
        const auto& sp = hit->geometry.spacing;
        v.spacing = {sp[2], sp[1], sp[0]};
        return v;
      }
      if (warn) warn(c.image + " changed since it was cached: preprocessing it again");
    } else if (!rejection.empty() && warn) {
      warn(rejection);
    }
    if (!raw)
      throw Error(c.image, "case '" + c.name + "' of dataset '" + d.name + "' is not in the cache " + folder() +
                               " and this build cannot read raw images: fill the cache on a machine with ITK "
                               "(iris-train CONFIG --fill-cache) and copy the folder here");
    CaseVolume v = raw(d, c);
    CachedVolume entry;
    entry.voxels = v.image.to(at::kFloat).contiguous();
    entry.labels = narrow_labels(v.labels).contiguous();
    entry.geometry.size = {v.image.size(2), v.image.size(1), v.image.size(0)};
    entry.geometry.spacing = {v.spacing[2], v.spacing[1], v.spacing[0]};
    entry.info = "dataset: " + d.name + "\ncase: " + c.name + "\nimage: " + c.image + "\nlabels: " + c.labels +
                 "\nsource-fingerprint: " + here + "\nlabel-values:";
    for (long value : values_present(*entry.labels)) entry.info += " " + std::to_string(value);
    entry.info += "\n";
    cache_.put(key, entry);
    return v;
  };
}

void CaseCache::record_dataset(const DatasetSpec& d) const {
  const std::string path = dataset_record_path(folder(), d.name);
  fs::create_directories(fs::path(path).parent_path());
  std::ostringstream f;
  for (const auto& [value, name] : d.class_names) f << "class\t" << value << "\t" << name << "\n";
  for (const auto& c : d.cases) f << "case\t" << c.name << "\t" << c.image << "\t" << c.labels << "\n";
  write_text_file(path, f.str());
}

std::optional<RecordedDataset> CaseCache::recorded_dataset(const std::string& dataset) const {
  const std::string path = dataset_record_path(folder(), dataset);
  std::ifstream f(path);
  if (!f) return std::nullopt;
  RecordedDataset r;
  std::string line;
  long n = 0;
  while (std::getline(f, line)) {
    ++n;
    std::vector<std::string> cols;
    std::stringstream s(line);
    for (std::string col; std::getline(s, col, '\t');) cols.push_back(col);
    if (cols.size() == 3 && cols[0] == "class") {
      r.class_names[parse_label_key(cols[1], path + ": line " + std::to_string(n))] = cols[2];
    } else if (cols.size() == 4 && cols[0] == "case") {
      r.cases.push_back({cols[1], cols[2], cols[3]});
    } else {
      throw Error(path, "line " + std::to_string(n) + " is neither 'class<TAB>value<TAB>name' nor 'case<TAB>name<TAB>image<TAB>labels'");
    }
  }
  if (r.cases.empty()) throw Error(path, "records no case");
  return r;
}

}  // namespace iris::data
