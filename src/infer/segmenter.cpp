// Segmenter: set-up (models, preprocessing, window), one query, the report.
// The other parts are listed in segmenter_state.h.
#include "iris/infer/segmenter.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>

#include "iris/common/compat.h"
#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/common/text.h"
#include "iris/io/intensity.h"
#include "iris/io/label_ops.h"
#include "iris/io/preprocess.h"
#include "segmenter_state.h"

namespace iris::infer {

Segmenter::Segmenter(const std::string& model_path, TaskSpec task, SegmenterOptions options)
    : Segmenter(std::vector<std::string>{model_path}, std::move(task), std::move(options)) {}

Segmenter::Segmenter(const std::vector<std::string>& model_paths, TaskSpec task, SegmenterOptions options,
                     std::vector<double> weights)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.spec = std::move(task);
  s.options = std::move(options);
  if (model_paths.empty()) throw SettingError("models", "is required");
  if (!weights.empty() && weights.size() != model_paths.size())
    throw SettingError("model_weights", "give one weight per model (" + std::to_string(model_paths.size()) + " models, " +
                                       std::to_string(weights.size()) + " weights)");
  for (double w : weights)
    if (!(w > 0) || !std::isfinite(w)) throw SettingError("model_weights", "weights must be positive numbers");
  if (model_paths.size() > 1) {
    // Stored tasks and pools belong to the model that made them.
    if (s.stored_task()) throw SettingError("task_file", "a stored task belongs to one model: give reference pairs to an ensemble of models");
    if (!s.spec.pool_dir.empty()) throw SettingError("pool_dir", "a stored pool belongs to one model: give reference pairs to an ensemble of models");
    if (!s.spec.tuned_task_out.empty()) throw SettingError("tuned_task_out", "an ensemble of models tunes one task per model");
  }
  s.choose_strategy();
  if (s.options.preprocess != "model") {
    const auto schemes = io::intensity_schemes();
    if (std::find(schemes.begin(), schemes.end(), s.options.preprocess) == schemes.end()) {
      std::string known = "model";
      for (const auto& scheme : schemes) known += ", " + scheme;
      throw SettingError("preprocess", "unknown value '" + s.options.preprocess + "' (known: " + known + ")");
    }
  }
  s.load_models(model_paths, weights);
  s.choose_preprocessing();
  s.configure_window();
  s.configure_skull_strip();
  s.reference_modality = s.spec.references.empty()
                             ? to_upper(s.spec.reference_modality)
                             : segmenter_detail::input_modality(s.spec.references[0], s.spec.reference_modality, "");
  for (auto& m : s.members) {
    s.build_task(m);
    if (m.task.labels != s.members[0].task.labels)
      throw Error(m.path, "its task has other label values than " + s.members[0].path + "'s");
  }
}

void Segmenter::State::load_models(const std::vector<std::string>& paths, const std::vector<double>& weights) {
  members.resize(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    Member& m = members[i];
    m.path = paths[i];
    m.weight = weights.empty() ? 1.0 : weights[i];
    const auto t = Clock::now();
    m.model = model::load_model(m.path);
    m.model.net->to(options.device);
    m.model.net->set_channels_last(true);
    m.model.net->eval();
    timings.add("load_model", t);
    if (options.preprocess == "model" && m.model.preprocess != members[0].model.preprocess)
      throw InputError(m.path, "stores other preprocessing than " + members[0].path +
                                   ": an ensemble needs one (or " + setting_ref("preprocess") + " with an intensity scheme)");
  }
}

// --preprocess model: the model's spatial steps run on every input and are
// inverted on every output; its intensity step runs after them.
void Segmenter::State::choose_preprocessing() {
  const model::IrisModel& first = members[0].model;
  intensity = options.preprocess;
  if (options.preprocess == "model") {
    if (first.preprocess.empty()) {
      // An imported model without its preprocessing scores near 0 on raw
      // inputs and gives no other sign: run it only when asked to.
      throw InputError(members[0].path,
                       std::string("stores no preprocessing (spacing, orientation, intensity), so its inputs would go in raw: give ") +
                           setting_ref("preprocess") + " none (or an intensity scheme) to run it that way, or import it again with its "
                  "preprocessing (iris-import --preprocess-like MODEL.iris, or preprocess: keys in --config)");
    }
    spatial = io::PreprocessConfig::from_config(ConfigMap::parse_text(first.preprocess, members[0].path + " (preprocess)"));
    intensity = spatial->intensity;
    spatial->intensity = "none";
  }
  if (options.fast) {
    if (!spatial)
      throw SettingError("fast", options.preprocess != "model"
                                     ? "runs at the model's stored fast spacing: it needs " + setting_ref("preprocess") + " model"
                                     : members[0].path + " stores no preprocessing, so no fast spacing");
    if (!spatial->fast_spacing)
      throw SettingError("fast", members[0].path + " stores no preprocess.fast_spacing (train it with one, e.g. "
                                                   "preprocess.fast_spacing: [3, 3, 3], to allow " + setting_ref("fast") + ")");
    spatial->spacing = spatial->fast_spacing;
  }
}

void Segmenter::State::configure_window() {
  const model::IrisModel& first = members[0].model;
  long max_patch = std::numeric_limits<long>::max();
  for (const auto& m : members) max_patch = std::min(max_patch, m.model.config.max_patch_size);
  window.window = options.window > 0 ? options.window : max_patch;
  if (window.window % 16 != 0 || window.window > max_patch)
    throw SettingError("window", "must be a multiple of 16 and at most the model's patch size " + std::to_string(max_patch));
  window.overlap = options.overlap;
  window.batch = options.window_batch;
  window.device = options.device;
  window.stitching = options.stitching;
  // --tta flips the query only along the axes the model was trained to be
  // mirror-invariant along (train.augment_mirror, stored in the model file):
  // flipped along any other, a model reads an unknown anatomy (docs/inference.md).
  window.mirror_tta = options.mirror_tta;
  if (options.mirror_tta) {
    window.mirror_axes = first.mirror_axes;
    for (const auto& m : members)
      if (m.model.mirror_axes.empty() || m.model.mirror_axes != first.mirror_axes)
        throw SettingError("mirror_tta",
                           m.model.mirror_axes.empty()
                               ? m.path + " was not trained with mirror augmentation (train.augment_mirror), so "
                                          "mirrored queries are not what it learned: run without " + setting_ref("mirror_tta")
                               : m.path + " is mirror-invariant along '" + m.model.mirror_axes + "', " +
                                     members[0].path + " along '" + first.mirror_axes +
                                     "': an ensemble with " + setting_ref("mirror_tta") + " needs one set of axes");
  }
  window.classes_per_pass = options.classes_per_pass;
  window.progress = options.window_progress;
  window.stitched = [this](bool on_device) {
    std::lock_guard<std::mutex> lock(report_mutex);
    stitched_on.insert(on_device ? "device" : "host");
  };
}

// The skull-strip step stored in the model file, with its preprocessing.
void Segmenter::State::configure_skull_strip() {
  const model::IrisModel& first = members[0].model;
  if (options.preprocess != "model") return;
  if (options.skull_strip && first.skull_strip) {
    strip = true;
    brain = first.skull_strip->to(options.device);
  }
  for (const auto& m : members)
    if (m.model.skull_strip.has_value() != first.skull_strip.has_value())
      throw InputError(m.path, std::string(m.model.skull_strip ? "stores" : "does not store") +
                                   " a skull-strip step and " + members[0].path +
                                   (first.skull_strip ? " does" : " does not") +
                                   ": an ensemble needs one preprocessing (or " + setting_ref("preprocess") + " with an intensity scheme)");
}

Segmenter::~Segmenter() = default;

const model::TaskEmbedding& Segmenter::task() const { return s_->members[0].task; }
const EmbeddingPool& Segmenter::pool() const { return s_->members[0].pool; }
const std::string& Segmenter::strategy() const { return s_->strategy; }
const model::IrisModel& Segmenter::model() const { return s_->members[0].model; }
const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& Segmenter::statistics() const {
  return s_->statistics;
}
const std::vector<FailedQuery>& Segmenter::failed() const { return s_->failed; }

// --window-batch auto: sized once, on a full window, with the task's classes;
// an ensemble takes the smallest size of its members.
void Segmenter::State::size_window_batch() {
  compat::AutocastGuard autocast(options.device.type(), at::kBFloat16, options.bf16);
  const long w = window.window;
  long batch = 64;
  for (auto& m : members) {
    std::string why;
    batch = std::min(batch, auto_window_batch(*m.model.net, m.task, {w, w, w}, window, 64, 0.75, &why));
    window_batch_notes.push_back(m.path + ": " + why);
  }
  window.batch = batch;
}

// Each model with its own task; the ensemble's probabilities are the weighted
// mean of the members' (one member: exactly its own).
at::Tensor Segmenter::State::ensemble_probabilities(const at::Tensor& volume, model::TaskEmbedding* task,
                                                    std::vector<std::string>* picked) {
  at::Tensor probs;
  double total_weight = 0;
  for (auto& m : members) {
    const model::TaskEmbedding member_task = task_for(m, volume, picked);
    const auto t = Clock::now();
    at::Tensor p;
    {
      // bf16 autocast of the windows' forward passes (weights stay float32).
      compat::AutocastGuard autocast(options.device.type(), at::kBFloat16, options.bf16);
      p = sliding_window_probabilities(*m.model.net, volume, member_task, window);
    }
    p = p.to(at::kFloat);
    timings.add("network", t);
    if (members.size() == 1) probs = p;
    else probs = probs.defined() ? probs + p * m.weight : p * m.weight;
    total_weight += m.weight;
    if (&m == &members[0]) *task = member_task;
  }
  return members.size() > 1 ? probs / total_weight : probs;
}

Segmentation Segmenter::segment(const Image& query, const std::string& name) {
  State& s = *s_;
  using Clock = State::Clock;
  const Image stripped = s.strip ? s.strip_skull(query) : Image();
  auto t = Clock::now();
  auto [image, pre] = s.to_model_space(s.strip ? stripped : query);
  const at::Tensor volume = io::normalise_intensity(image.voxels, s.intensity);
  s.timings.add("preprocess", t);
  if (s.window.batch <= 0) s.size_window_batch();

  Segmentation out;
  model::TaskEmbedding task;
  at::Tensor probs = s.ensemble_probabilities(volume, &task, &out.retrieved);
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
                 {"stitching", s.options.stitching == Stitching::host     ? "host"
                               : s.options.stitching == Stitching::device ? "device"
                                                                          : "auto"},
                 {"fast", s.options.fast},
                 {"skull_strip", s.strip},
                 {"peak_rss_bytes", peak_rss_bytes()}};
  if (!s.window_batch_notes.empty()) report["window_batch_auto"] = s.window_batch_notes;
  {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    report["stitched_on"] = std::vector<std::string>(s.stitched_on.begin(), s.stitched_on.end());
    report["warnings"] = s.warnings;
    report["failed"] = Json::array();
    for (const auto& f : s.failed) report["failed"].push_back({{"input", f.input}, {"case", f.name}, {"error", f.error}});
    if (!s.retrieved.empty()) report["retrieved"] = s.retrieved;
  }
  report["seconds"] = s.timings.to_json();
  if (!s.members[0].tuning_losses.empty()) {
    report["tuning_loss"] = s.members[0].tuning_loss;
    report["tuning_losses"] = Json::array();
    for (double l : s.members[0].tuning_losses) report["tuning_losses"].push_back(number(l));
  }
  if (s.members.size() > 1) {
    report["models"] = Json::array();
    for (const auto& m : s.members) {
      report["models"].push_back({{"path", m.path}, {"fingerprint", m.model.fingerprint}, {"weight", number(m.weight)}});
      if (!m.tuning_loss.empty()) report["models"].back()["tuning_loss"] = m.tuning_loss;
    }
  }
  return report;
}

}  // namespace iris::infer
