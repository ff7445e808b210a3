#include "iris/infer/query_plan.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/common/label_list.h"
#include "iris/common/log.h"
#include "iris/common/text.h"
#include "iris/io/dicom.h"

namespace iris::infer {

namespace fs = std::filesystem;

std::vector<size_t> shard(const std::vector<std::string>& names, long num_parts, long part_id) {
  if (num_parts < 1) throw SettingError("num_parts", "must be at least 1");
  if (part_id < 0 || part_id >= num_parts)
    throw SettingError("part_id",
                       "must be in 0.." + std::to_string(num_parts - 1) + " (it is " + std::to_string(part_id) + ")");
  std::vector<size_t> mine;
  for (size_t i = 0; i < names.size(); ++i) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a: the same on every machine and build
    for (unsigned char c : names[i]) h = (h ^ c) * 1099511628211ull;
    if (static_cast<long>(h % static_cast<uint64_t>(num_parts)) == part_id) mine.push_back(i);
  }
  return mine;
}

SeriesFilter SeriesFilter::parse(const std::string& text, const std::string& where) {
  SeriesFilter f;
  for (const auto& item : split_comma_list(text)) {
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (eq == std::string::npos || value.empty())
      throw Error(where, "expected KEY=VALUE items (modality=CT,description=REGEX,min-slices=N), got '" + item + "'");
    if (key == "modality") {
      f.modality = to_upper(value);
    } else if (key == "description") {
      try {
        std::regex(value, std::regex::ECMAScript | std::regex::icase);
      } catch (const std::regex_error& e) {
        throw Error(where, "description '" + value + "' is not a regular expression: " + e.what());
      }
      f.description = value;
    } else if (key == "min-slices") {
      if (value.find_first_not_of("0123456789") != std::string::npos || value.size() > 6)
        throw Error(where, "min-slices must be a whole number, got '" + value + "'");
      f.min_slices = std::max(3L, std::stol(value));
    } else {
      throw Error(where, "unknown key '" + key + "' (known: modality, description, min-slices)");
    }
  }
  return f;
}

namespace {

// Why a series is not a query of the study, or "" when it is one.
std::string series_excluded(const io::DicomSeriesInfo& info, const SeriesFilter& f) {
  if (info.number_of_slices < 3)
    return std::to_string(info.number_of_slices) + " slice(s): not a volume (a localiser or single image)";
  if (info.number_of_slices < f.min_slices)
    return std::to_string(info.number_of_slices) + " slices, fewer than min-slices=" + std::to_string(f.min_slices);
  if (!f.modality.empty() && to_upper(info.modality) != f.modality)
    return "modality " + (info.modality.empty() ? std::string("(none)") : info.modality) + ", not " + f.modality;
  if (!f.description.empty() &&
      !std::regex_search(info.description, std::regex(f.description, std::regex::ECMAScript | std::regex::icase)))
    return "description '" + info.description + "' does not match '" + f.description + "'";
  return "";
}

// The folder of a series' files relative to the study folder ("" = itself).
fs::path relative_folder(const io::DicomSeriesInfo& info, const std::string& study) {
  if (info.files.empty()) return {};
  const fs::path rel = fs::path(info.files.front()).parent_path().lexically_relative(fs::path(study));
  return rel.empty() || rel == "." ? fs::path() : rel;
}

// A name from a file, fit for a message: control characters shown as '?'.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  return out;
}

// An output never replaces, or mixes with, the images it is made from.
void check_outputs_apart_from_input(const QueryJob& job) {
  for (const auto& o : {job.output, job.probabilities, job.dicom_seg}) {
    if (o.empty()) continue;
    std::error_code ec;
    const bool same = fs::exists(o, ec) && fs::equivalent(o, job.input, ec);
    if (same || (fs::is_directory(job.input) && lies_inside(job.input, o)))
      throw Error(o, (same ? "is the query " + job.input + " itself" : "lies inside the query folder " + job.input) +
                         ": an output never replaces or joins its inputs; choose an output outside them");
  }
}

// The folder several outputs go into, created (with its parents) when it is
// missing, as SLURM array jobs need; only an existing non-folder is refused.
void require_folder(const std::string& path, const std::string& setting, const std::string& why) {
  std::error_code ec;
  if (fs::exists(path) && !fs::is_directory(path))
    throw SettingError(setting, why + " need a folder; " + path + " is a file");
  fs::create_directories(path, ec);
  if (ec) throw SettingError(setting, "cannot create the folder " + path + " for " + why + ": " + ec.message());
}

}  // namespace

std::vector<QueryJob> plan_queries(const std::string& query, const std::string& output, const PlanOptions& options,
                                   std::vector<SkippedQuery>* skipped) {
  if (query.empty()) throw SettingError("query", "is required");
  if (output.empty()) throw SettingError("output", "is required");
  if (options.num_parts != 1 || options.part_id != 0) shard({}, options.num_parts, options.part_id);  // checks the settings
  // An output inside a query folder would mix with (or replace) its inputs;
  // checked before any folder is made.
  if (fs::is_directory(query))
    for (const auto& [setting, path] : {std::pair<std::string, std::string>{"output", output},
                                        {"probabilities", options.probabilities}, {"dicom_seg", options.dicom_seg}})
      if (!path.empty() && lies_inside(query, path))
        throw SettingError(setting, path + " lies inside the query folder " + query +
                              ": an output never replaces or joins its inputs; choose an output outside them");
  std::vector<QueryJob> candidates;
  bool several = false;
  if (fs::is_directory(query)) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(query))
      if (e.is_regular_file() && has_image_extension(e.path().string())) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    if (!files.empty()) {
      several = true;
      for (const auto& f : files) candidates.push_back({f, "", "", "", "", case_name(f)});
    } else if (!options.series.empty()) {
      candidates.push_back({query, output, options.probabilities, options.dicom_seg, options.series, case_name(query)});
    } else {
      // A DICOM folder: one series, or a study of several.
      std::vector<io::DicomSkippedFile> stray;
      const auto series = io::list_dicom_series(query, true, &stray);
      if (series.size() == 1 && !fs::is_directory(output)) {
        candidates.push_back({query, output, options.probabilities, options.dicom_seg, "", case_name(query)});
      } else {
        several = true;
        require_folder(output, "output", "the " + std::to_string(series.size()) + " series of a DICOM study");
        if (!options.dicom_seg.empty())
          require_folder(options.dicom_seg, "dicom_seg", "the series of a DICOM study");
        if (skipped)
          for (const auto& f : stray) skipped->push_back({f.file, f.reason});
        std::string excluded;  // for the error when none is left
        for (const auto& info : series) {
          const std::string why = series_excluded(info, options.series_filter);
          if (!why.empty()) {
            if (skipped) skipped->push_back({query + " series " + info.uid, why});
            excluded += "\n  series " + printable(info.uid) + ": " + why;
            continue;
          }
          // The UID comes from the files: it names an output only as one
          // safe path component, and every output must lie in its folder.
          const fs::path rel = relative_folder(info, query);
          const std::string name = safe_path_component(info.uid);
          if (name != info.uid)
            log::warn(query + ": series UID '" + printable(info.uid) + "' is not a safe file name; its outputs are named " + name);
          QueryJob job{query, (fs::path(output) / rel / (name + ".nii.gz")).string(), "", "", info.uid, name};
          if (!options.dicom_seg.empty()) job.dicom_seg = (fs::path(options.dicom_seg) / rel / (name + ".dcm")).string();
          if (!options.probabilities.empty())
            job.probabilities = (fs::path(options.probabilities) / rel / (name + ".nii.gz")).string();
          const std::vector<std::pair<std::string, std::string>> outputs{
              {output, job.output}, {options.dicom_seg, job.dicom_seg}, {options.probabilities, job.probabilities}};
          for (const auto& [folder, file] : outputs)
            if (!file.empty() && !lies_inside(folder, file))
              throw Error(query, "series " + printable(info.uid) + " would be written outside " + folder + " (" + file + ")");
          candidates.push_back(job);
        }
        if (candidates.empty())
          throw Error(query, "no series of the study is a query:" +
                                 (excluded.empty() ? std::string(" it holds none") : excluded));
      }
    }
  } else if (fs::path(query).extension() == ".txt") {
    std::ifstream f(query);
    if (!f) throw Error(query, "cannot open the query list");
    std::string line;
    while (std::getline(f, line))
      if (!line.empty()) candidates.push_back({line, "", "", "", "", case_name(line)});
    if (candidates.empty()) throw Error(query, "the query list is empty");
    several = true;
  } else {
    if (!fs::exists(query)) throw Error(query, "query does not exist");
    candidates.push_back({query, output, options.probabilities, options.dicom_seg, "", case_name(query)});
  }
  if (!options.dicom_seg.empty() && !fs::is_directory(candidates[0].input))
    throw SettingError("dicom_seg", "needs " + setting_ref("query") + " to be DICOM (a series or study folder); " + query + " is not");
  if (!several) {
    check_outputs_apart_from_input(candidates[0]);
    return candidates;
  }

  if (candidates[0].output.empty()) {  // image files: OUTPUT/CASE.nii.gz
    require_folder(output, "output", "several queries");
    if (!options.probabilities.empty()) require_folder(options.probabilities, "probabilities", "several queries");
    if (!options.dicom_seg.empty()) throw SettingError("dicom_seg", "needs DICOM queries, not image files");
    std::vector<std::string> seen;
    for (auto& job : candidates) {
      // Two inputs with one case name would write one file twice.
      if (std::find(seen.begin(), seen.end(), job.name) != seen.end())
        throw Error(job.input, "another query has the case name '" + job.name + "': outputs would overwrite each other");
      seen.push_back(job.name);
      job.output = (fs::path(output) / (job.name + ".nii.gz")).string();
      if (!options.probabilities.empty()) job.probabilities = (fs::path(options.probabilities) / (job.name + ".nii.gz")).string();
    }
  } else if (!options.probabilities.empty()) {
    require_folder(options.probabilities, "probabilities", "the series of a DICOM study");
  }
  std::vector<std::string> names;
  for (const auto& job : candidates) names.push_back(job.name);
  std::vector<QueryJob> jobs;
  std::set<std::string> swept;
  for (size_t i : shard(names, options.num_parts, options.part_id)) {
    QueryJob job = candidates[i];
    std::vector<std::string> outputs{job.output};
    if (!job.probabilities.empty()) outputs.push_back(job.probabilities);
    if (!job.dicom_seg.empty()) outputs.push_back(job.dicom_seg);
    check_outputs_apart_from_input(job);
    bool all_exist = true;
    std::string existing;
    for (const auto& o : outputs) {
      if (fs::exists(o)) {
        if (existing.empty()) existing = o;
      } else {
        all_exist = false;
      }
    }
    if (options.skip_finished && all_exist) {
      if (skipped) skipped->push_back({job.name, "finished: its outputs exist"});
      continue;
    }
    if (!options.overwrite && !options.skip_finished && !existing.empty())
      throw InputError(existing, "exists: " + setting_ref("overwrite") + " replaces the outputs, " + setting_ref("skip_finished") + " skips the finished cases");
    // Studies mirror their folders: make the sub-folders, and sweep the
    // temporary files a killed run (kill -9) left there.
    for (const auto& o : outputs) {
      const fs::path folder = fs::path(o).parent_path();
      fs::create_directories(folder);
      // Array tasks on other nodes may be writing here: only files untouched
      // for 10 minutes count as a killed run's.
      if (swept.insert(fs::absolute(folder).string()).second)
        remove_stale_temporaries(folder.empty() ? "." : folder.string(), false, 600);
    }
    jobs.push_back(job);
  }
  return jobs;
}

}  // namespace iris::infer
