#pragma once
// What a Segmenter holds, shared by the files that implement it (private to
// src/infer/):
//   segmenter.cpp             set-up (models, preprocessing, window), one
//                             query, the report;
//   segmenter_inputs.cpp      reading references and queries into the
//                             model's space, the skull-strip step;
//   segmenter_strategies.cpp  where the task comes from: the six strategies,
//                             once at set-up and per query (retrieval);
//   segmenter_files.cpp       runs over many files: reader and writer threads.
// Query planning (which files, where results go) is query_plan.cpp.
#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "iris/common/json.h"
#include "iris/infer/segmenter.h"
#include "iris/infer/sliding_window.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_file.h"

namespace iris::infer {

namespace segmenter_detail {

using Clock = std::chrono::steady_clock;

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

// A reference image and its label map, in the model's space.
struct ReferencePair {
  Image image, mask;
  std::string path;
};

// Modality of an input: `given` when set, else the DICOM Modality tag of a
// DICOM folder, else "" (NIfTI and friends do not record it). Upper case.
std::string input_modality(const std::string& path, const std::string& given, const std::string& series);

}  // namespace segmenter_detail

struct Segmenter::State {
  using Clock = segmenter_detail::Clock;
  using ReferencePair = segmenter_detail::ReferencePair;

  // One member per model file: its network and its own encoding of the task.
  struct Member {
    std::string path;
    double weight = 1;
    model::IrisModel model;
    model::TaskEmbedding task;
    EmbeddingPool pool;
    std::vector<double> tuning_losses;
    std::string tuning_loss;  // the loss tuning optimised, for the report
  };

  TaskSpec spec;
  SegmenterOptions options;
  std::vector<Member> members;
  std::vector<ReferencePair> reference_cache;  // read once for every member
  std::string strategy;
  std::string intensity;  // scheme applied after the spatial steps
  std::optional<io::PreprocessConfig> spatial;
  bool strip = false;          // the model file's skull-strip step runs first
  model::TaskEmbedding brain;  // its task, on the device
  SlidingWindowOptions window;
  std::vector<std::string> window_batch_notes;  // how --window-batch auto chose
  std::set<std::string> stitched_on;             // where the windows were blended: "host", "device"
  std::vector<long> labels;                     // label values of the task
  std::string reference_modality;
  segmenter_detail::Timings timings;
  mutable std::mutex report_mutex;
  std::vector<std::string> warnings;
  std::vector<FailedQuery> failed;  // segment_files: queries that could not be read or segmented
  Json retrieved = Json::object();
  std::vector<std::pair<std::string, std::vector<ClassStatistics>>> statistics;

  // Recorded for the report and passed to options.warn (else logged).
  void warn(const std::string& message);

  // --- set-up (segmenter.cpp), in the order the constructor runs them ---
  void load_models(const std::vector<std::string>& paths, const std::vector<double>& weights);
  void choose_preprocessing();  // options.preprocess / --fast -> spatial, intensity
  void configure_window();      // window size, overlap, batch, --tta axes
  void configure_skull_strip();

  // --- one query (segmenter.cpp) ---
  void size_window_batch();  // --window-batch auto, on the first query
  // The members' class probabilities (weighted mean) on the model's grid,
  // the first member's task for this query, and the retrieval choices.
  at::Tensor ensemble_probabilities(const at::Tensor& volume, model::TaskEmbedding* task, std::vector<std::string>* picked);

  // --- inputs (segmenter_inputs.cpp) ---
  // Image (and its preprocessing record) in the model's space.
  std::pair<Image, std::optional<io::PreprocessedImage>> to_model_space(const Image& image) const;
  // The model file's skull-strip step on an image as read.
  Image strip_skull(const Image& image);
  // Reference pair i in the model's space (read once; sets `labels`).
  ReferencePair read_reference(size_t i);
  // A query as read, with the modality check and the reader's warnings.
  Image read_query(const std::string& path, const QueryReadOptions& read);

  // --- strategies (segmenter_strategies.cpp) ---
  void choose_strategy();              // strategy from the spec, and its inputs checked
  void build_task(Member& member);     // member.task (and pool) for the strategy
  // The task for one query: retrieval picks per query (names appended to
  // `picked`), the others return member.task.
  model::TaskEmbedding task_for(Member& member, const at::Tensor& volume, std::vector<std::string>* picked);

  // --- strategy helpers (segmenter_strategies.cpp) ---
  bool stored_task() const { return !spec.task_file.empty() || spec.task.has_value(); }
  model::TaskEmbedding load_task(const Member& member) const;
  model::TaskEmbedding encode_one(Member& member, const ReferencePair& pair);
  model::TaskEmbedding encode_references(Member& member);
  void add_references_to_pool(Member& member);
  void build_memory_bank_task(Member& member);
  void build_tuned_task(Member& member);
  void build_retrieval_task(Member& member);
};

}  // namespace iris::infer
