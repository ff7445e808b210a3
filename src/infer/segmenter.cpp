#include "iris/infer/segmenter.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <ATen/ATen.h>
#include <torch/types.h>

#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/log.h"
#include "iris/infer/reference.h"
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

std::vector<QueryJob> plan_queries(const std::string& query, const std::string& output, const PlanOptions& options,
                                   std::vector<std::string>* skipped) {
  if (query.empty()) throw Error("--query", "is required");
  if (output.empty()) throw Error("--output", "is required");
  std::vector<std::string> inputs;
  bool several = false;
  if (fs::is_directory(query)) {
    for (const auto& e : fs::directory_iterator(query))
      if (e.is_regular_file() && has_image_extension(e.path().string())) inputs.push_back(e.path().string());
    std::sort(inputs.begin(), inputs.end());
    several = !inputs.empty();
    if (!several) inputs.push_back(query);  // a DICOM series folder
  } else if (fs::path(query).extension() == ".txt") {
    std::ifstream f(query);
    if (!f) throw Error(query, "cannot open the query list");
    std::string line;
    while (std::getline(f, line))
      if (!line.empty()) inputs.push_back(line);
    if (inputs.empty()) throw Error(query, "the query list is empty");
    several = true;
  } else {
    if (!fs::exists(query)) throw Error(query, "query does not exist");
    inputs.push_back(query);
  }
  if (!options.dicom_seg.empty() && (several || !fs::is_directory(inputs[0])))
    throw Error("--dicom-seg", "needs --query to be one DICOM series folder; " + query + " is not");
  std::vector<QueryJob> jobs;
  if (!several) {
    if (options.num_parts > 1) shard({}, options.num_parts, options.part_id);  // checks the flags
    jobs.push_back({inputs[0], output, options.probabilities, options.dicom_seg});
    return jobs;
  }
  if (!fs::is_directory(output)) throw Error("--output", "several queries need an existing folder; " + output + " is not");
  if (!options.probabilities.empty() && !fs::is_directory(options.probabilities))
    throw Error("--probabilities", "several queries need an existing folder; " + options.probabilities + " is not");
  // Two inputs with one case name would write one file twice.
  std::vector<std::string> names;
  for (const auto& in : inputs) {
    const std::string name = case_name(in);
    if (std::find(names.begin(), names.end(), name) != names.end())
      throw Error(in, "another query has the case name '" + name + "': outputs would overwrite each other");
    names.push_back(name);
  }
  for (size_t i : shard(names, options.num_parts, options.part_id)) {
    QueryJob job{inputs[i], (fs::path(output) / (names[i] + ".nii.gz")).string(), "", ""};
    if (!options.probabilities.empty()) job.probabilities = (fs::path(options.probabilities) / (names[i] + ".nii.gz")).string();
    const bool labels_exist = fs::exists(job.output);
    const bool probabilities_exist = job.probabilities.empty() || fs::exists(job.probabilities);
    if (options.skip_finished && labels_exist && probabilities_exist) {
      if (skipped) skipped->push_back(job.input);
      continue;
    }
    if (!options.overwrite && !options.skip_finished) {
      if (labels_exist)
        throw Error(job.output, "exists: --overwrite replaces the outputs, --continue skips the finished cases");
      if (!job.probabilities.empty() && fs::exists(job.probabilities))
        throw Error(job.probabilities, "exists: --overwrite replaces the outputs, --continue skips the finished cases");
    }
    jobs.push_back(job);
  }
  return jobs;
}

struct Segmenter::State {
  TaskSpec spec;
  SegmenterOptions options;
  std::string model_path;
  model::IrisModel model;
  std::string strategy;
  std::string intensity;                   // scheme applied after the spatial steps
  std::optional<io::PreprocessConfig> spatial;
  SlidingWindowOptions window;
  std::vector<long> labels;                // label values of the task
  model::TaskEmbedding task;
  EmbeddingPool pool;
  std::vector<double> tuning_losses;
  std::string reference_modality;
  Timings timings;
  mutable std::mutex report_mutex;
  std::vector<std::string> warnings;
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

  ReferencePair read_reference(size_t i) {
    const auto t = Clock::now();
    ReferencePair pair{io::read_image(spec.references[i]), io::read_labels(spec.reference_masks[i]),
                       spec.references[i]};
    // Counted before anything per label is made (resampling, masks).
    reference_label_values(pair.mask, labels.empty() ? spec.labels : labels, spec.max_labels);
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
    return pair;
  }

  model::TaskEmbedding encode_one(const ReferencePair& pair) {
    const auto t = Clock::now();
    auto encoded = encode_reference(*model.net, pair.image, pair.mask, labels, intensity, options.device,
                                    model.fingerprint, options.classes_per_pass);
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
      pool.entries.push_back(encode_pool_entry(*model.net, pair.image, pair.mask, labels, intensity, options.device,
                                               model.fingerprint, options.classes_per_pass));
      timings.add("encode", t);
      std::string name = case_name(spec.references[i]);
      for (const auto& e : pool.entries)
        if (&e != &pool.entries.back() && e.name == name) name += "_" + std::to_string(i);
      pool.entries.back().name = name;
    }
  }

  model::TaskEmbedding load_task() const {
    model::TaskEmbedding t = model::TaskEmbedding::load(spec.task_file);
    if (t.model_fingerprint != model.fingerprint)
      throw Error(spec.task_file, "task embedding was made by another model (fingerprint " + t.model_fingerprint +
                                      ", this model " + model.fingerprint + "); encode it again with this model");
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
      if (!spec.references.empty() || !spec.task_file.empty() || !spec.pool_dir.empty())
        throw Error("--strategy memory-bank", "takes its task from --classes only");
    } else if (!spec.classes.empty()) {
      throw Error("--classes", "only with --strategy memory-bank");
    }
    if (strategy == "one-shot" || strategy == "ensemble") {
      if ((!spec.references.empty()) + (!spec.task_file.empty()) != 1)
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
      for (const auto& n : spec.classes) ids.push_back(model::class_id(model, n));
      task.stages = model.net->memory_bank_tokens(at::tensor(ids, at::kLong));
      for (auto& s : task.stages) s = s.to(at::kCPU);
      task.names = spec.classes;
      for (size_t i = 0; i < ids.size(); ++i) task.labels.push_back(static_cast<long>(i) + 1);
      task.model_fingerprint = model.fingerprint;
    } else if (strategy == "one-shot" || strategy == "ensemble") {
      task = spec.task_file.empty() ? encode_references() : load_task();
    } else if (strategy == "tuning") {
      // Examples are the reference pairs; the start is --task or their ensemble.
      std::vector<TuningExample> examples;
      std::vector<model::TaskEmbedding> encoded;
      for (size_t i = 0; i < spec.references.size(); ++i) {
        ReferencePair pair = read_reference(i);
        io::check_same_grid(pair.image, pair.mask);
        if (spec.task_file.empty()) encoded.push_back(encode_one(pair));
        std::vector<at::Tensor> masks;
        for (long v : labels) masks.push_back(pair.mask.voxels.eq(v).to(at::kFloat));
        examples.push_back({io::normalise_intensity(pair.image.voxels, intensity), at::stack(masks)});
      }
      task = spec.task_file.empty() ? model::TaskEmbedding::mean(encoded) : load_task();
      if (task.num_classes() != static_cast<long>(labels.size()))
        throw Error("--task", "the stored task has " + std::to_string(task.num_classes()) +
                                  " classes but the references give " + std::to_string(labels.size()));
      TuningOptions tuning = spec.tuning;
      tuning.device = options.device;
      tuning.classes_per_pass = options.classes_per_pass;
      if (options.tuning_progress) tuning.progress = options.tuning_progress;
      const auto t = Clock::now();
      TuningResult tuned = tune_task_embedding(*model.net, task, examples, tuning);
      timings.add("tune", t);
      task = tuned.task;
      tuning_losses = tuned.losses;
      if (!spec.tuned_task_out.empty()) task.save(spec.tuned_task_out);
    } else {  // retrieval, image-retrieval
      if (!spec.pool_dir.empty()) pool = EmbeddingPool::load(spec.pool_dir, model.fingerprint);
      const size_t stored = pool.entries.size();
      add_references_to_pool();
      // Object retrieval starts from the first reference pair, else from a
      // random pool entry (seeded: runs repeat).
      if (!spec.references.empty()) {
        task = pool.entries[stored].task;
      } else {
        std::mt19937 rng(spec.seed);
        task = pool.entries[std::uniform_int_distribution<size_t>(0, pool.entries.size() - 1)(rng)].task;
        labels = task.labels;
        if (!spec.labels.empty()) {
          std::vector<long> indices;
          for (long r : spec.labels) {
            const auto it = std::find(task.labels.begin(), task.labels.end(), r);
            if (it == task.labels.end())
              throw Error("--labels", "label value " + std::to_string(r) + " is not in the pool's initial entry");
            indices.push_back(static_cast<long>(it - task.labels.begin()));
          }
          task = task.select(indices);
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
      RetrievalResult r = object_level_retrieval(*model.net, volume, task, pool, ro);
      timings.add("retrieval", t);
      for (const long e : r.chosen_entry) picked->push_back(e < 0 ? std::string("(initial)") : pool.entries[e].name);
      return r.task;
    }
    if (strategy == "image-retrieval") {
      const auto t = Clock::now();
      const at::Tensor features = image_feature_vector(*model.net, volume, window.window, options.device);
      const long e = nearest_image(features, pool);
      const auto& chosen = pool.entries[e].task;
      std::vector<long> indices;
      for (long l : task.labels) {
        const auto it = std::find(chosen.labels.begin(), chosen.labels.end(), l);
        if (it == chosen.labels.end())
          throw Error(pool.entries[e].name, "nearest pool entry lacks label value " + std::to_string(l));
        indices.push_back(static_cast<long>(it - chosen.labels.begin()));
      }
      timings.add("retrieval", t);
      picked->push_back(pool.entries[e].name);
      return chosen.select(indices);
    }
    return task;
  }
};

Segmenter::Segmenter(const std::string& model_path, TaskSpec task, SegmenterOptions options)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.spec = std::move(task);
  s.options = std::move(options);
  s.model_path = model_path;
  s.choose_strategy();
  if (s.options.preprocess != "model") {
    const auto schemes = io::intensity_schemes();
    if (std::find(schemes.begin(), schemes.end(), s.options.preprocess) == schemes.end()) {
      std::string known = "model";
      for (const auto& scheme : schemes) known += ", " + scheme;
      throw Error("--preprocess", "unknown value '" + s.options.preprocess + "' (known: " + known + ")");
    }
  }
  const auto t = Clock::now();
  s.model = model::load_model(model_path);
  s.model.net->to(s.options.device);
  s.model.net->set_channels_last(true);
  s.model.net->eval();
  s.timings.add("load_model", t);

  // --preprocess model: the model's spatial steps run on every input and are
  // inverted on every output; its intensity step runs after them.
  s.intensity = s.options.preprocess;
  if (s.options.preprocess == "model") {
    if (s.model.preprocess.empty()) {
      s.intensity = "none";
    } else {
      s.spatial = io::PreprocessConfig::from_config(
          ConfigMap::parse_text(s.model.preprocess, model_path + " (preprocess)"));
      s.intensity = s.spatial->intensity;
      s.spatial->intensity = "none";
    }
  }

  s.window.window = s.options.window > 0 ? s.options.window : s.model.config.max_patch_size;
  if (s.window.window % 16 != 0 || s.window.window > s.model.config.max_patch_size)
    throw Error("--window", "must be a multiple of 16 and at most the model's patch size " +
                                std::to_string(s.model.config.max_patch_size));
  s.window.overlap = s.options.overlap;
  s.window.batch = s.options.window_batch;
  s.window.device = s.options.device;
  s.window.mirror_tta = s.options.mirror_tta;
  s.window.classes_per_pass = s.options.classes_per_pass;
  s.window.progress = s.options.window_progress;

  s.reference_modality = s.spec.references.empty()
                             ? upper(s.spec.reference_modality)
                             : input_modality(s.spec.references[0], s.spec.reference_modality, "");
  s.build_task();
}

Segmenter::~Segmenter() = default;

const model::TaskEmbedding& Segmenter::task() const { return s_->task; }
const EmbeddingPool& Segmenter::pool() const { return s_->pool; }
const std::string& Segmenter::strategy() const { return s_->strategy; }
const model::IrisModel& Segmenter::model() const { return s_->model; }
const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& Segmenter::statistics() const {
  return s_->statistics;
}

Segmentation Segmenter::segment(const Image& query, const std::string& name) {
  State& s = *s_;
  auto t = Clock::now();
  auto [image, pre] = s.to_model_space(query);
  const at::Tensor volume = io::normalise_intensity(image.voxels, s.intensity);
  s.timings.add("preprocess", t);

  Segmentation out;
  const model::TaskEmbedding task = s.task_for(volume, &out.retrieved);
  if (!out.retrieved.empty()) {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    s.retrieved[name] = out.retrieved;
  }
  t = Clock::now();
  at::Tensor probs = sliding_window_probabilities(*s.model.net, volume, task, s.window);
  s.timings.add("network", t);
  t = Clock::now();
  at::Tensor labels = labels_from_probabilities(probs, task.labels, s.options.threshold);
  labels = postprocess_labels(labels, task.labels, s.options.post);
  s.timings.add("postprocess", t);
  t = Clock::now();
  if (pre) {
    // Back onto the query's own grid; probabilities only when asked (a
    // K-class float volume at full resolution is large).
    labels = io::invert_to_source(labels, *pre, true).voxels;
    if (s.options.probabilities) probs = io::invert_to_source(probs, *pre, false).voxels;
  }
  s.timings.add("invert", t);
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
    s.statistics.emplace_back(case_name(name), out.statistics);
  }
  return out;
}

Segmentation Segmenter::segment_file(const std::string& path, const QueryReadOptions& read) {
  return segment(s_->read_query(path, read), path);
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

  std::thread reader([&] {
    try {
      for (size_t i = 0; i < jobs.size(); ++i) {
        Image image = s.read_query(jobs[i].input, read);
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
            io::write_dicom_seg(job.dicom_seg, w.result.labels, job.input, read.series, seg);
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
      Written w{r.job, segment(r.image, jobs[r.job].input)};
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

Json Segmenter::report() const {
  const State& s = *s_;
  const long K = s.task.num_classes();
  Json report = {{"model", s.model_path},
                 {"model_fingerprint", s.model.fingerprint},
                 {"strategy", s.strategy},
                 {"device", s.options.device.str()},
                 {"classes", K},
                 {"classes_per_pass", s.options.classes_per_pass > 0 ? std::min(s.options.classes_per_pass, K) : K},
                 {"peak_rss_bytes", peak_rss_bytes()}};
  {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    report["warnings"] = s.warnings;
    if (!s.retrieved.empty()) report["retrieved"] = s.retrieved;
  }
  report["seconds"] = s.timings.to_json();
  if (!s.tuning_losses.empty()) {
    report["tuning_losses"] = Json::array();
    for (double l : s.tuning_losses) report["tuning_losses"].push_back(number(l));
  }
  return report;
}

}  // namespace iris::infer
