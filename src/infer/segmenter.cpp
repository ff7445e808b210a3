#include "iris/infer/segmenter.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include <ATen/ATen.h>
#include <torch/types.h>

#include "iris/common/atomic_file.h"
#include "iris/common/compat.h"
#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/label_list.h"
#include "iris/common/log.h"
#include "iris/infer/reference.h"
#include "iris/infer/skull_strip.h"
#include "iris/infer/sliding_window.h"
#include "iris/io/dicom.h"
#include "iris/io/dicom_seg.h"
#include "iris/io/image_io.h"
#include "iris/io/intensity.h"
#include "iris/io/label_ops.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_file.h"

namespace iris::infer {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Modality of an input: `given` when set, else the DICOM Modality tag of a
// DICOM folder, else "" (NIfTI and friends do not record it).
std::string input_modality(const std::string& path, const std::string& given, const std::string& series) {
  if (!given.empty()) return upper(given);
  if (!fs::is_directory(path)) return "";
  for (const auto& info : io::list_dicom_series(path))
    if (series.empty() || info.uid == series || info.series_instance_uid == series) return upper(info.modality);
  return "";
}

// Seconds per stage, in first-seen order; safe from several threads.
class Timings {
 public:
  void add(const std::string& name, Clock::time_point since) {
    const double s = std::chrono::duration<double>(Clock::now() - since).count();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& st : stages_)
      if (st.first == name) {
        st.second += s;
        return;
      }
    stages_.emplace_back(name, s);
  }
  Json to_json() const {
    std::lock_guard<std::mutex> lock(mutex_);
    Json j = Json::object();
    for (const auto& [stage, seconds] : stages_) j[stage] = number(seconds);
    return j;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::pair<std::string, double>> stages_;
};

struct ReferencePair {
  Image image, mask;
  std::string path;
};

}  // namespace

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names{"one-shot", "ensemble", "memory-bank", "retrieval", "image-retrieval",
                                              "tuning"};
  return names;
}

std::vector<size_t> shard(const std::vector<std::string>& names, long num_parts, long part_id) {
  if (num_parts < 1) throw Error("--num-parts", "must be at least 1");
  if (part_id < 0 || part_id >= num_parts)
    throw Error("--part-id", "must be in 0.." + std::to_string(num_parts - 1) + " (it is " + std::to_string(part_id) + ")");
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
      f.modality = upper(value);
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
  if (!f.modality.empty() && upper(info.modality) != f.modality)
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
void require_folder(const std::string& path, const std::string& flag, const std::string& why) {
  std::error_code ec;
  if (fs::exists(path) && !fs::is_directory(path))
    throw Error(flag, why + " need a folder; " + path + " is a file");
  fs::create_directories(path, ec);
  if (ec) throw Error(flag, "cannot create the folder " + path + " for " + why + ": " + ec.message());
}

}  // namespace

std::vector<QueryJob> plan_queries(const std::string& query, const std::string& output, const PlanOptions& options,
                                   std::vector<SkippedQuery>* skipped) {
  if (query.empty()) throw Error("--query", "is required");
  if (output.empty()) throw Error("--output", "is required");
  if (options.num_parts != 1 || options.part_id != 0) shard({}, options.num_parts, options.part_id);  // checks the flags
  // An output inside a query folder would mix with (or replace) its inputs;
  // checked before any folder is made.
  if (fs::is_directory(query))
    for (const auto& [flag, path] : {std::pair<std::string, std::string>{"--output", output},
                                     {"--probabilities", options.probabilities}, {"--dicom-seg", options.dicom_seg}})
      if (!path.empty() && lies_inside(query, path))
        throw Error(flag, path + " lies inside the query folder " + query +
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
        require_folder(output, "--output", "the " + std::to_string(series.size()) + " series of a DICOM study");
        if (!options.dicom_seg.empty())
          require_folder(options.dicom_seg, "--dicom-seg", "the series of a DICOM study");
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
    throw Error("--dicom-seg", "needs --query to be DICOM (a series or study folder); " + query + " is not");
  if (!several) {
    check_outputs_apart_from_input(candidates[0]);
    return candidates;
  }

  if (candidates[0].output.empty()) {  // image files: OUTPUT/CASE.nii.gz
    require_folder(output, "--output", "several queries");
    if (!options.probabilities.empty()) require_folder(options.probabilities, "--probabilities", "several queries");
    if (!options.dicom_seg.empty()) throw Error("--dicom-seg", "needs DICOM queries, not image files");
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
    require_folder(options.probabilities, "--probabilities", "the series of a DICOM study");
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
      if (skipped) skipped->push_back({job.name, "finished: its outputs exist (--continue)"});
      continue;
    }
    if (!options.overwrite && !options.skip_finished && !existing.empty())
      throw Error(existing, "exists: --overwrite replaces the outputs, --continue skips the finished cases");
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

struct Segmenter::State {
  TaskSpec spec;
  SegmenterOptions options;
  // One member per model file: its network and its own encoding of the task.
  struct Member {
    std::string path;
    double weight = 1;
    model::IrisModel model;
    model::TaskEmbedding task;
    EmbeddingPool pool;
    std::vector<double> tuning_losses;
  };
  std::vector<Member> members;
  Member* cur = nullptr;                   // the member being built or run
  std::vector<ReferencePair> reference_cache;  // read once for every member
  std::string strategy;
  std::string intensity;                   // scheme applied after the spatial steps
  std::optional<io::PreprocessConfig> spatial;
  bool strip = false;         // the model file's skull-strip step runs first
  model::TaskEmbedding brain;  // its task, on the device
  SlidingWindowOptions window;
  std::vector<std::string> window_batch_notes;  // how --window-batch auto chose
  std::vector<long> labels;                // label values of the task
  std::string reference_modality;
  Timings timings;
  mutable std::mutex report_mutex;
  std::vector<std::string> warnings;
  std::vector<FailedQuery> failed;  // segment_files: queries that could not be read or segmented
  Json retrieved = Json::object();
  std::vector<std::pair<std::string, std::vector<ClassStatistics>>> statistics;

  void warn(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(report_mutex);
      warnings.push_back(message);
    }
    if (options.warn) options.warn(message);
    else log::warn(message);
  }

  // Image (and its preprocessing record) in the model's space.
  std::pair<Image, std::optional<io::PreprocessedImage>> to_model_space(const Image& image) const {
    if (!spatial) return {image, std::nullopt};
    io::PreprocessedImage pre = io::preprocess(image, *spatial);
    Image out;
    out.voxels = pre.voxels;
    out.geometry = pre.geometry;
    out.source = image.source;
    out.warnings = image.warnings;
    return {out, pre};
  }

  // The model file's skull-strip step: the brain segmented with its stored
  // task (the first model's, for an ensemble) on the unstripped image,
  // exactly as infer::skull_strip does it (largest component, holes filled,
  // on the image's own grid), and the image set to 0 outside it.
  Image strip_skull(const Image& image) {
    const auto t = Clock::now();
    const std::string what = image.source.empty() ? "image" : image.source;
    if (image.voxels.dim() != 3) throw Error(what, "skull stripping (the model's first step) needs a single-channel 3-D image");
    auto [model_space, pre] = to_model_space(image);
    const at::Tensor volume = io::normalise_intensity(model_space.voxels, intensity);
    SlidingWindowOptions w = window;
    w.progress = nullptr;
    w.classes_per_pass = 0;
    w.mirror_tta = false;  // the skull-strip step runs once, unmirrored
    if (w.batch <= 0) w.batch = 1;  // --window-batch auto is sized at the first query
    at::Tensor p;
    {
      compat::AutocastGuard autocast(options.device.type(), at::kBFloat16, options.bf16);
      p = sliding_window_probabilities(*members[0].model.net, volume, brain, w);
    }
    PostprocessOptions post;
    post.keep_largest = true;
    at::Tensor labels = postprocess_labels(labels_from_probabilities(p.to(at::kFloat), brain.labels, 0.5), brain.labels, post);
    if (pre) labels = io::invert_to_source(labels, *pre, true).voxels;
    Image out = strip_with_labels(image, labels,
                                  "the skull-strip step of " + members[0].path +
                                      " found no brain (is it a head MR? --no-skull-strip skips the step)")
                    .image;
    timings.add("skull_strip", t);
    return out;
  }

  ReferencePair read_reference(size_t i) {
    if (i < reference_cache.size()) return reference_cache[i];
    auto t = Clock::now();
    ReferencePair pair{io::read_image(spec.references[i]), io::read_labels(spec.reference_masks[i]),
                       spec.references[i]};
    // Counted before anything per label is made (resampling, masks).
    reference_label_values(pair.mask, labels.empty() ? spec.labels : labels, spec.max_labels);
    if (strip) {
      timings.add("read", t);
      io::check_same_grid(pair.image, pair.mask);
      pair.image = strip_skull(pair.image);
      t = Clock::now();
    }
    if (spatial) {
      io::check_same_grid(pair.image, pair.mask);
      auto [image, pre] = to_model_space(pair.image);
      io::PreprocessedImage mask = io::preprocess_labels(pair.mask, *pre);
      pair.image = image;
      pair.mask.voxels = mask.voxels;
      pair.mask.geometry = mask.geometry;
    }
    for (const auto& w : pair.image.warnings) warn(spec.references[i] + ": " + w);
    timings.add("read", t);
    const auto values = reference_label_values(pair.mask, labels.empty() ? spec.labels : labels, spec.max_labels);
    if (labels.empty()) labels = values;
    reference_cache.push_back(pair);
    return pair;
  }

  model::TaskEmbedding encode_one(const ReferencePair& pair) {
    const auto t = Clock::now();
    auto encoded = encode_reference(*cur->model.net, pair.image, pair.mask, labels, intensity, options.device,
                                    cur->model.fingerprint, options.classes_per_pass);
    timings.add("encode", t);
    return encoded;
  }

  model::TaskEmbedding encode_references() {
    std::vector<model::TaskEmbedding> tasks;
    for (size_t i = 0; i < spec.references.size(); ++i) tasks.push_back(encode_one(read_reference(i)));
    return model::TaskEmbedding::mean(tasks);
  }

  void add_references_to_pool() {
    for (size_t i = 0; i < spec.references.size(); ++i) {
      ReferencePair pair = read_reference(i);
      const auto t = Clock::now();
      cur->pool.entries.push_back(encode_pool_entry(*cur->model.net, pair.image, pair.mask, labels, intensity, options.device,
                                               cur->model.fingerprint, options.classes_per_pass));
      timings.add("encode", t);
      std::string name = case_name(spec.references[i]);
      for (const auto& e : cur->pool.entries)
        if (&e != &cur->pool.entries.back() && e.name == name) name += "_" + std::to_string(i);
      cur->pool.entries.back().name = name;
    }
  }

  bool stored_task() const { return !spec.task_file.empty() || spec.task.has_value(); }

  model::TaskEmbedding load_task() const {
    model::TaskEmbedding t = spec.task ? *spec.task : model::TaskEmbedding::load(spec.task_file);
    if (t.model_fingerprint != cur->model.fingerprint)
      throw Error(spec.task ? std::string("task") : spec.task_file, "task embedding was made by another model (fingerprint " + t.model_fingerprint +
                                      ", this model " + cur->model.fingerprint + "); encode it again with this model");
    return t;
  }

  void choose_strategy() {
    strategy = spec.strategy;
    if (strategy.empty()) {
      if (!spec.classes.empty()) strategy = "memory-bank";
      else if (!spec.pool_dir.empty()) strategy = "retrieval";
      else if (spec.references.size() > 1) strategy = "ensemble";
      else strategy = "one-shot";
    }
    const auto& known = strategy_names();
    if (std::find(known.begin(), known.end(), strategy) == known.end())
      throw Error("--strategy", "unknown strategy '" + strategy + "'");
    const bool retrieval = strategy == "retrieval" || strategy == "image-retrieval";
    if (spec.references.size() != spec.reference_masks.size())
      throw Error("--reference-mask", "give one --reference-mask per --reference (" +
                                          std::to_string(spec.references.size()) + " images, " +
                                          std::to_string(spec.reference_masks.size()) + " masks)");
    if (strategy == "memory-bank") {
      if (spec.classes.empty()) throw Error("--strategy memory-bank", "needs --classes");
      if (!spec.references.empty() || stored_task() || !spec.pool_dir.empty())
        throw Error("--strategy memory-bank", "takes its task from --classes only");
    } else if (!spec.classes.empty()) {
      throw Error("--classes", "only with --strategy memory-bank");
    }
    if (strategy == "one-shot" || strategy == "ensemble") {
      if (!spec.task_file.empty() && spec.task) throw Error("--task", "give one stored task");
      if ((!spec.references.empty()) + stored_task() != 1)
        throw Error("--reference", "give exactly one task source: --reference/--reference-mask, --task or --classes");
      if (strategy == "one-shot" && spec.references.size() > 1)
        throw Error("--strategy one-shot", "takes one --reference (several make a context ensemble: --strategy ensemble)");
    }
    if (retrieval && spec.references.empty() && spec.pool_dir.empty())
      throw Error("--strategy " + strategy, "needs --pool and/or reference pairs to choose from");
    if (strategy == "tuning" && spec.references.empty())
      throw Error("--strategy tuning", "needs labelled examples: --reference/--reference-mask");
    if (!spec.pool_dir.empty() && !retrieval) throw Error("--pool", "only with --strategy retrieval or image-retrieval");
    if (!spec.tuned_task_out.empty() && strategy != "tuning")
      throw Error("--tuned-task-out", "only with --strategy tuning");

  }

  void build_task() {
    if (strategy == "memory-bank") {
      std::vector<int64_t> ids;
      for (const auto& n : spec.classes) ids.push_back(model::class_id(cur->model, n));
      cur->task.stages = cur->model.net->memory_bank_tokens(at::tensor(ids, at::kLong));
      for (auto& s : cur->task.stages) s = s.to(at::kCPU);
      cur->task.names = spec.classes;
      for (size_t i = 0; i < ids.size(); ++i) cur->task.labels.push_back(static_cast<long>(i) + 1);
      cur->task.model_fingerprint = cur->model.fingerprint;
    } else if (strategy == "one-shot" || strategy == "ensemble") {
      cur->task = stored_task() ? load_task() : encode_references();
    } else if (strategy == "tuning") {
      // Examples are the reference pairs; the start is --task or their ensemble.
      std::vector<TuningExample> examples;
      std::vector<model::TaskEmbedding> encoded;
      for (size_t i = 0; i < spec.references.size(); ++i) {
        ReferencePair pair = read_reference(i);
        io::check_same_grid(pair.image, pair.mask);
        if (!stored_task()) encoded.push_back(encode_one(pair));
        std::vector<at::Tensor> masks;
        for (long v : labels) masks.push_back(pair.mask.voxels.eq(v).to(at::kFloat));
        examples.push_back({io::normalise_intensity(pair.image.voxels, intensity), at::stack(masks)});
      }
      cur->task = stored_task() ? load_task() : model::TaskEmbedding::mean(encoded);
      if (cur->task.num_classes() != static_cast<long>(labels.size()))
        throw Error("--task", "the stored task has " + std::to_string(cur->task.num_classes()) +
                                  " classes but the references give " + std::to_string(labels.size()));
      TuningOptions tuning = spec.tuning;
      tuning.device = options.device;
      tuning.classes_per_pass = options.classes_per_pass;
      if (options.tuning_progress) tuning.progress = options.tuning_progress;
      const auto t = Clock::now();
      TuningResult tuned = tune_task_embedding(*cur->model.net, cur->task, examples, tuning);
      timings.add("tune", t);
      cur->task = tuned.task;
      cur->tuning_losses = tuned.losses;
      if (!spec.tuned_task_out.empty()) cur->task.save(spec.tuned_task_out);
    } else {  // retrieval, image-retrieval
      if (!spec.pool_dir.empty()) cur->pool = EmbeddingPool::load(spec.pool_dir, cur->model.fingerprint);
      const size_t stored = cur->pool.entries.size();
      add_references_to_pool();
      // Object retrieval starts from the first reference pair, else from a
      // random pool entry (seeded: runs repeat).
      if (!spec.references.empty()) {
        cur->task = cur->pool.entries[stored].task;
      } else {
        std::mt19937 rng(spec.seed);
        cur->task = cur->pool.entries[std::uniform_int_distribution<size_t>(0, cur->pool.entries.size() - 1)(rng)].task;
        labels = cur->task.labels;
        if (!spec.labels.empty()) {
          std::vector<long> indices;
          for (long r : spec.labels) {
            const auto it = std::find(cur->task.labels.begin(), cur->task.labels.end(), r);
            if (it == cur->task.labels.end())
              throw Error("--labels", "label value " + std::to_string(r) + " is not in the pool's initial entry");
            indices.push_back(static_cast<long>(it - cur->task.labels.begin()));
          }
          cur->task = cur->task.select(indices);
          labels = spec.labels;
        }
      }
    }
  }

  // A query as read, with the modality check and the reader's warnings.
  Image read_query(const std::string& path, const QueryReadOptions& read) {
    if (!reference_modality.empty()) {
      const std::string q = input_modality(path, read.modality, read.series);
      if (!q.empty() && q != reference_modality)
        warn(path + ": query modality " + q + " differs from the reference modality " + reference_modality +
             " (in-context segmentation across modalities is unreliable)");
    }
    const auto t = Clock::now();
    io::ImageReadOptions options;
    options.nan_as = read.nan_as;
    Image image = fs::is_directory(path) && !read.series.empty() ? io::read_dicom_series(path, read.series)
                                                                 : io::read_image(path, options);
    for (const auto& w : image.warnings) warn(path + ": " + w);
    timings.add("read", t);
    return image;
  }

  // The task for one query (retrieval picks per query) and what was picked.
  model::TaskEmbedding task_for(const at::Tensor& volume, std::vector<std::string>* picked) {
    if (strategy == "retrieval") {
      const auto t = Clock::now();
      RetrievalOptions ro;
      ro.window = window;
      ro.window.progress = nullptr;
      ro.threshold = options.threshold;
      ro.similarity = spec.similarity;
      RetrievalResult r = object_level_retrieval(*cur->model.net, volume, cur->task, cur->pool, ro);
      timings.add("retrieval", t);
      for (const long e : r.chosen_entry) picked->push_back(e < 0 ? std::string("(initial)") : cur->pool.entries[e].name);
      return r.task;
    }
    if (strategy == "image-retrieval") {
      const auto t = Clock::now();
      const at::Tensor features = image_feature_vector(*cur->model.net, volume, window.window, options.device);
      const long e = nearest_image(features, cur->pool);
      const auto& chosen = cur->pool.entries[e].task;
      std::vector<long> indices;
      for (long l : cur->task.labels) {
        const auto it = std::find(chosen.labels.begin(), chosen.labels.end(), l);
        if (it == chosen.labels.end())
          throw Error(cur->pool.entries[e].name, "nearest pool entry lacks label value " + std::to_string(l));
        indices.push_back(static_cast<long>(it - chosen.labels.begin()));
      }
      timings.add("retrieval", t);
      picked->push_back(cur->pool.entries[e].name);
      return chosen.select(indices);
    }
    return cur->task;
  }
};

Segmenter::Segmenter(const std::string& model_path, TaskSpec task, SegmenterOptions options)
    : Segmenter(std::vector<std::string>{model_path}, std::move(task), std::move(options)) {}

Segmenter::Segmenter(const std::vector<std::string>& model_paths, TaskSpec task, SegmenterOptions options,
                     std::vector<double> weights)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.spec = std::move(task);
  s.options = std::move(options);
  if (model_paths.empty()) throw Error("--model", "is required");
  if (!weights.empty() && weights.size() != model_paths.size())
    throw Error("--model-weights", "give one weight per --model (" + std::to_string(model_paths.size()) + " models, " +
                                       std::to_string(weights.size()) + " weights)");
  for (double w : weights)
    if (!(w > 0) || !std::isfinite(w)) throw Error("--model-weights", "weights must be positive numbers");
  if (model_paths.size() > 1) {
    // Stored tasks and pools belong to the model that made them.
    if (s.stored_task()) throw Error("--task", "a stored task belongs to one model: give reference pairs to an ensemble of models");
    if (!s.spec.pool_dir.empty()) throw Error("--pool", "a stored pool belongs to one model: give reference pairs to an ensemble of models");
    if (!s.spec.tuned_task_out.empty()) throw Error("--tuned-task-out", "an ensemble of models tunes one task per model");
  }
  s.choose_strategy();
  if (s.options.preprocess != "model") {
    const auto schemes = io::intensity_schemes();
    if (std::find(schemes.begin(), schemes.end(), s.options.preprocess) == schemes.end()) {
      std::string known = "model";
      for (const auto& scheme : schemes) known += ", " + scheme;
      throw Error("--preprocess", "unknown value '" + s.options.preprocess + "' (known: " + known + ")");
    }
  }
  s.members.resize(model_paths.size());
  long max_patch = std::numeric_limits<long>::max();
  for (size_t i = 0; i < model_paths.size(); ++i) {
    State::Member& m = s.members[i];
    m.path = model_paths[i];
    m.weight = weights.empty() ? 1.0 : weights[i];
    const auto t = Clock::now();
    m.model = model::load_model(m.path);
    m.model.net->to(s.options.device);
    m.model.net->set_channels_last(true);
    m.model.net->eval();
    s.timings.add("load_model", t);
    if (s.options.preprocess == "model" && m.model.preprocess != s.members[0].model.preprocess)
      throw Error(m.path, "stores other preprocessing than " + s.members[0].path +
                              ": an ensemble needs one (or --preprocess with an intensity scheme)");
    max_patch = std::min(max_patch, m.model.config.max_patch_size);
  }
  const model::IrisModel& first = s.members[0].model;

  // --preprocess model: the model's spatial steps run on every input and are
  // inverted on every output; its intensity step runs after them.
  s.intensity = s.options.preprocess;
  if (s.options.preprocess == "model") {
    if (first.preprocess.empty()) {
      // An imported model without its preprocessing scores near 0 on raw
      // inputs and gives no other sign: run it only when asked to.
      throw Error(s.members[0].path,
                  "stores no preprocessing (spacing, orientation, intensity), so its inputs would go in raw: give "
                  "--preprocess none (or an intensity scheme) to run it that way, or import it again with its "
                  "preprocessing (iris-import --preprocess-like MODEL.iris, or preprocess: keys in --config)");
    } else {
      s.spatial = io::PreprocessConfig::from_config(
          ConfigMap::parse_text(first.preprocess, s.members[0].path + " (preprocess)"));
      s.intensity = s.spatial->intensity;
      s.spatial->intensity = "none";
    }
  }

  if (s.options.fast) {
    if (!s.spatial)
      throw Error("--fast", s.options.preprocess != "model"
                                ? "runs at the model's stored fast spacing: it needs --preprocess model"
                                : s.members[0].path + " stores no preprocessing, so no fast spacing");
    if (!s.spatial->fast_spacing)
      throw Error("--fast", s.members[0].path + " stores no preprocess.fast_spacing (train it with one, e.g. "
                                                "preprocess.fast_spacing: [3, 3, 3], to allow --fast)");
    s.spatial->spacing = s.spatial->fast_spacing;
  }

  s.window.window = s.options.window > 0 ? s.options.window : max_patch;
  if (s.window.window % 16 != 0 || s.window.window > max_patch)
    throw Error("--window", "must be a multiple of 16 and at most the model's patch size " + std::to_string(max_patch));
  s.window.overlap = s.options.overlap;
  s.window.batch = s.options.window_batch;
  s.window.device = s.options.device;
  // --tta flips the query only along the axes the model was trained to be
  // mirror-invariant along (train.augment_mirror, stored in the model file):
  // flipped along any other, a model reads an unknown anatomy (a model
  // trained without mirroring scored 0.000 / 0.155 / 0.000 / 0.000 with all
  // eight flips, against 0.751 / 0.699 / 0.683 / 0.708 without).
  s.window.mirror_tta = s.options.mirror_tta;
  if (s.options.mirror_tta) {
    s.window.mirror_axes = first.mirror_axes;
    for (const auto& m : s.members)
      if (m.model.mirror_axes.empty() || m.model.mirror_axes != first.mirror_axes)
        throw Error("--tta", m.model.mirror_axes.empty()
                                 ? m.path + " was not trained with mirror augmentation (train.augment_mirror), so "
                                            "mirrored queries are not what it learned: run without --tta"
                                 : m.path + " is mirror-invariant along '" + m.model.mirror_axes + "', " + s.members[0].path +
                                       " along '" + first.mirror_axes + "': an ensemble with --tta needs one set of axes");
  }
  s.window.classes_per_pass = s.options.classes_per_pass;
  s.window.progress = s.options.window_progress;

  // The skull-strip step stored in the model file, with its preprocessing.
  if (s.options.preprocess == "model" && s.options.skull_strip && first.skull_strip) {
    s.strip = true;
    s.brain = first.skull_strip->to(s.options.device);
  }
  for (const auto& m : s.members)
    if (s.options.preprocess == "model" && m.model.skull_strip.has_value() != first.skull_strip.has_value())
      throw Error(m.path, std::string(m.model.skull_strip ? "stores" : "does not store") + " a skull-strip step and " +
                              s.members[0].path + (first.skull_strip ? " does" : " does not") +
                              ": an ensemble needs one preprocessing (or --preprocess with an intensity scheme)");

  s.reference_modality = s.spec.references.empty()
                             ? upper(s.spec.reference_modality)
                             : input_modality(s.spec.references[0], s.spec.reference_modality, "");
  for (auto& m : s.members) {
    s.cur = &m;
    s.build_task();
    if (m.task.labels != s.members[0].task.labels)
      throw Error(m.path, "its task has other label values than " + s.members[0].path + "'s");
  }
  s.cur = &s.members[0];
}

Segmenter::~Segmenter() = default;

const model::TaskEmbedding& Segmenter::task() const { return s_->members[0].task; }
const EmbeddingPool& Segmenter::pool() const { return s_->members[0].pool; }
const std::string& Segmenter::strategy() const { return s_->strategy; }
const model::IrisModel& Segmenter::model() const { return s_->members[0].model; }
const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& Segmenter::statistics() const {
  return s_->statistics;
}

Segmentation Segmenter::segment(const Image& query, const std::string& name) {
  State& s = *s_;
  const Image stripped = s.strip ? s.strip_skull(query) : Image();
  auto t = Clock::now();
  auto [image, pre] = s.to_model_space(s.strip ? stripped : query);
  const at::Tensor volume = io::normalise_intensity(image.voxels, s.intensity);
  s.timings.add("preprocess", t);

  if (s.window.batch <= 0) {
    // --window-batch auto: sized once, on a full window, with the task's
    // classes; an ensemble takes the smallest size of its members.
    compat::AutocastGuard autocast(s.options.device.type(), at::kBFloat16, s.options.bf16);
    const long w = s.window.window;
    long batch = 64;
    for (auto& m : s.members) {
      std::string why;
      batch = std::min(batch, auto_window_batch(*m.model.net, m.task, {w, w, w}, s.window, 64, 0.75, &why));
      s.window_batch_notes.push_back(m.path + ": " + why);
    }
    s.window.batch = batch;
  }

  Segmentation out;
  // Each model with its own task; the ensemble's probabilities are the
  // weighted mean of the members' (one member: exactly its own).
  at::Tensor probs;
  model::TaskEmbedding task;
  double total_weight = 0;
  for (auto& m : s.members) {
    s.cur = &m;
    const model::TaskEmbedding member_task = s.task_for(volume, &out.retrieved);
    t = Clock::now();
    at::Tensor p;
    {
      // bf16 autocast of the windows' forward passes (weights stay float32).
      compat::AutocastGuard autocast(s.options.device.type(), at::kBFloat16, s.options.bf16);
      p = sliding_window_probabilities(*m.model.net, volume, member_task, s.window);
    }
    p = p.to(at::kFloat);
    s.timings.add("network", t);
    if (s.members.size() == 1) {
      probs = p;
    } else {
      probs = probs.defined() ? probs + p * m.weight : p * m.weight;
    }
    total_weight += m.weight;
    if (&m == &s.members[0]) task = member_task;
  }
  s.cur = &s.members[0];
  if (s.members.size() > 1) probs = probs / total_weight;
  if (!out.retrieved.empty()) {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    s.retrieved[name] = out.retrieved;
  }
  at::Tensor labels;
  if (pre && s.options.smooth_labels) {
    // Probabilities back onto the query's grid (linear), labels from them
    // there: smoother edges on a finer query grid, K float volumes of memory.
    t = Clock::now();
    probs = io::invert_to_source(probs, *pre, false).voxels;
    s.timings.add("invert", t);
    t = Clock::now();
    labels = postprocess_labels(labels_from_probabilities(probs, task.labels, s.options.threshold), task.labels,
                                s.options.post);
    s.timings.add("postprocess", t);
  } else {
    t = Clock::now();
    labels = labels_from_probabilities(probs, task.labels, s.options.threshold);
    labels = postprocess_labels(labels, task.labels, s.options.post);
    s.timings.add("postprocess", t);
    t = Clock::now();
    if (pre) {
      // Back onto the query's own grid as labels (nearest); probabilities
      // only when asked (a K-class float volume at full resolution is large).
      labels = io::invert_to_source(labels, *pre, true).voxels;
      if (s.options.probabilities) probs = io::invert_to_source(probs, *pre, false).voxels;
    }
    s.timings.add("invert", t);
  }
  long highest = 0;
  for (long l : task.labels) highest = std::max(highest, l);
  out.labels.geometry = query.geometry;
  out.labels.source = query.source;
  out.labels.voxels = io::narrow_labels(labels, highest);
  if (s.options.probabilities) {
    Image p;
    p.geometry = query.geometry;
    p.voxels = probs;
    out.probabilities = std::move(p);
  }
  out.label_values = task.labels;
  out.class_names = task.names;
  if (s.options.statistics) {
    t = Clock::now();
    out.statistics = class_statistics(query, out.labels, out.label_values, out.class_names);
    s.timings.add("statistics", t);
    std::lock_guard<std::mutex> lock(s.report_mutex);
    s.statistics.emplace_back(name, out.statistics);
  }
  return out;
}

Segmentation Segmenter::segment_file(const std::string& path, const QueryReadOptions& read) {
  return segment(s_->read_query(path, read), case_name(path));
}

namespace {

// A one-slot hand-over between two threads; `close` ends it (with an error
// from the producer, rethrown to the consumer).
template <typename T>
class Handover {
 public:
  // False (and nothing handed over) once the consumer has closed it.
  bool put(T value) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return !full_ || closed_; });
    if (closed_) return false;
    slot_ = std::move(value);
    full_ = true;
    cv_.notify_all();
    return true;
  }
  // The next item; an item handed over before an error still comes first.
  // Then the error is rethrown; false when closed without one.
  bool take(T& out) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return full_ || closed_; });
    if (full_) {
      out = std::move(slot_);
      full_ = false;
      cv_.notify_all();
      return true;
    }
    if (error_) std::rethrow_exception(error_);
    return false;
  }
  void close(std::exception_ptr error = nullptr) {
    std::lock_guard<std::mutex> lock(m_);
    closed_ = true;
    if (error && !error_) error_ = error;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  T slot_{};
  bool full_ = false, closed_ = false;
  std::exception_ptr error_;
};

}  // namespace

void Segmenter::segment_files(const std::vector<QueryJob>& jobs, const QueryReadOptions& read,
                              const std::function<void(const QueryJob&)>& done) {
  State& s = *s_;
  struct Read {
    size_t job = 0;
    Image image;
  };
  struct Written {
    size_t job = 0;
    Segmentation result;
  };
  Handover<Read> to_network;
  Handover<Written> to_writer;

  auto fail = [&](const QueryJob& job, const std::string& why) {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    s.failed.push_back({job.input, job.name.empty() ? case_name(job.input) : job.name, why});
  };
  std::thread reader([&] {
    try {
      for (size_t i = 0; i < jobs.size(); ++i) {
        QueryReadOptions job_read = read;
        if (!jobs[i].series.empty()) job_read.series = jobs[i].series;
        Image image;
        try {
          image = s.read_query(jobs[i].input, job_read);
        } catch (const Error& e) {
          // A damaged series or file: reported, and the others are done
          // (one query alone: its error is the run's).
          if (jobs.size() == 1) throw;
          fail(jobs[i], e.what());
          continue;
        }
        if (!to_network.put({i, std::move(image)})) return;  // the run has stopped
      }
      to_network.close();
    } catch (...) {
      to_network.close(std::current_exception());
    }
  });
  std::thread writer([&] {
    try {
      Written w;
      while (to_writer.take(w)) {
        const QueryJob& job = jobs[w.job];
        const auto t = Clock::now();
        io::write_image(w.result.labels, job.output);
        if (!job.dicom_seg.empty()) {
          if (!w.result.labels.voxels.ne(0).any().item<bool>()) {
            // A SEG needs at least one frame; an empty result is still a result.
            s.warn(job.input + ": nothing segmented, so no DICOM-SEG written to " + job.dicom_seg);
          } else {
            io::DicomSegOptions seg;
            for (size_t c = 0; c < w.result.label_values.size() && c < w.result.class_names.size(); ++c)
              if (!w.result.class_names[c].empty()) seg.segment_names[w.result.label_values[c]] = w.result.class_names[c];
            io::write_dicom_seg(job.dicom_seg, w.result.labels, job.input, job.series.empty() ? read.series : job.series,
                                seg);
          }
        }
        if (!job.probabilities.empty() && w.result.probabilities) io::write_image(*w.result.probabilities, job.probabilities);
        s.timings.add("write", t);
        if (done) done(job);
      }
    } catch (...) {
      to_writer.close(std::current_exception());
      to_network.close(std::current_exception());  // stops the reader too
    }
  });

  std::exception_ptr failure;
  try {
    Read r;
    while (to_network.take(r)) {
      const QueryJob& job = jobs[r.job];
      Written w{r.job, {}};
      try {
        w.result = segment(r.image, job.name.empty() ? case_name(job.input) : job.name);
      } catch (const Error& e) {
        if (jobs.size() == 1) throw;
        fail(job, e.what());  // e.g. a volume too small for the model: the others go on
        continue;
      }
      if (!to_writer.put(std::move(w))) break;  // the writer failed
    }
  } catch (...) {
    failure = std::current_exception();
  }
  to_network.close(failure);  // stops the reader
  to_writer.close(failure);   // the writer finishes what it holds, then stops
  reader.join();
  writer.join();
  if (failure) std::rethrow_exception(failure);
  Written unused;
  to_writer.take(unused);  // rethrows the writer's error (a full disk), if any
}

const std::vector<FailedQuery>& Segmenter::failed() const { return s_->failed; }

Json Segmenter::report() const {
  const State& s = *s_;
  const long K = s.members[0].task.num_classes();
  Json report = {{"model", s.members[0].path},
                 {"model_fingerprint", s.members[0].model.fingerprint},
                 {"strategy", s.strategy},
                 {"device", s.options.device.str()},
                 {"classes", K},
                 {"classes_per_pass", s.options.classes_per_pass > 0 ? std::min(s.options.classes_per_pass, K) : K},
                 {"window_batch", s.window.batch},
                 {"fast", s.options.fast},
                 {"skull_strip", s.strip},
                 {"peak_rss_bytes", peak_rss_bytes()}};
  if (!s.window_batch_notes.empty()) report["window_batch_auto"] = s.window_batch_notes;
  {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    report["warnings"] = s.warnings;
    report["failed"] = Json::array();
    for (const auto& f : s.failed) report["failed"].push_back({{"input", f.input}, {"case", f.name}, {"error", f.error}});
    if (!s.retrieved.empty()) report["retrieved"] = s.retrieved;
  }
  report["seconds"] = s.timings.to_json();
  if (!s.members[0].tuning_losses.empty()) {
    report["tuning_losses"] = Json::array();
    for (double l : s.members[0].tuning_losses) report["tuning_losses"].push_back(number(l));
  }
  if (s.members.size() > 1) {
    report["models"] = Json::array();
    for (const auto& m : s.members)
      report["models"].push_back({{"path", m.path}, {"fingerprint", m.model.fingerprint}, {"weight", number(m.weight)}});
  }
  return report;
}

}  // namespace iris::infer
