#pragma once
// The whole query pipeline as a library object, as nnU-Net's nnUNetPredictor
// is: built once from a model file and a task (reference pairs, a stored
// task, memory-bank classes, a pool, or tuning on the references), then
// segments any number of queries:
//
//   infer::TaskSpec task;
//   task.references = {"ref.nii.gz"};
//   task.reference_masks = {"ref_mask.nii.gz"};
//   infer::Segmenter segmenter("model.iris", task, {});
//   infer::Segmentation s = segmenter.segment(io::read_image("query.nii.gz"));
//   io::write_image(s.labels, "query_mask.nii.gz");
//
// read -> model preprocessing -> intensity -> (retrieval) -> sliding window ->
// threshold/argmax -> post-processing -> inverse preprocessing onto the
// query's own grid. iris-infer is a command line over this class.
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "iris/common/image.h"
#include "iris/common/json.h"
#include "iris/infer/connected_components.h"
#include "iris/infer/query_plan.h"
#include "iris/infer/retrieval.h"
#include "iris/infer/sliding_window.h"
#include "iris/infer/statistics.h"
#include "iris/infer/tuning.h"
#include "iris/model/task_embedding.h"

namespace iris::model {
struct IrisModel;
}

namespace iris::infer {

// The strategies, in the words of the command line.
const std::vector<std::string>& strategy_names();

// Where the task comes from. Errors name a field as its setting
// (iris::SettingError: "pool_dir"); the comments give iris-infer's flags.
struct TaskSpec {
  // one-shot | ensemble | memory-bank | retrieval | image-retrieval | tuning;
  // "" = from the inputs (classes: memory-bank, pool: retrieval, several
  // references: ensemble, else one-shot).
  std::string strategy;
  std::vector<std::string> references, reference_masks;  // --reference / --reference-mask pairs
  std::string task_file;                                 // --task
  std::optional<model::TaskEmbedding> task;              // a task in memory, used as a stored one (not with --task)
  std::vector<std::string> classes;                      // --classes (memory bank)
  std::string pool_dir;                                  // --pool
  std::vector<long> labels;                              // --labels (empty: all of the first reference)
  long max_labels = 64;                                  // --max-labels
  std::string reference_modality;                        // --reference-modality ("" = DICOM tag or unknown)
  EmbeddingSimilarity similarity = EmbeddingSimilarity::all_tokens;  // --similarity
  unsigned seed = 0;                                     // --seed (retrieval's initial pool entry)
  // --tune-*; device and groups come from the options. The loss comes from
  // each model file (IrisModel::loss; soft Dice + BCE, 1:1, where it records
  // none), so tuning.loss is not read; tune_loss replaces the region term.
  TuningOptions tuning;
  std::optional<model::RegionLoss> tune_loss;            // --tune-loss
  std::string tuned_task_out;                            // --tuned-task-out
};

struct SegmenterOptions {
  // "model": the model file's stored preprocessing (spatial steps inverted on
  // output); else an intensity scheme only (io::intensity_schemes()).
  std::string preprocess = "model";
  c10::Device device{c10::kCPU};
  long window = 0;           // 0: the model's max patch size
  double overlap = 0.5;
  long window_batch = 1;      // windows per network call; 0 = auto (sized to the device's memory on the first query)
  // Where the windows are blended (sliding_window.h): automatic = on a GPU
  // --device when the sums take at most a tenth of its memory and half of
  // what is free, else host memory.
  Stitching stitching = Stitching::automatic;
  // Run at the coarser spacing the model file stores (preprocess.fast_spacing);
  // an iris::SettingError naming fast when it stores none.
  bool fast = false;
  bool mirror_tta = false;
  // Run the model file's skull-strip step (model::IrisModel::skull_strip)
  // on every query and reference first, when it stores one and `preprocess`
  // is "model" (iris-infer --no-skull-strip turns it off).
  bool skull_strip = true;
  bool bf16 = false;  // bf16 autocast of the network's forward passes (GPUs with bf16; CPUs too, slowly)
  long classes_per_pass = 0;
  double threshold = 0.5;
  PostprocessOptions post;
  bool probabilities = false;  // also return the class probabilities on the query's grid
  // Labels from the probabilities inverted onto the query's grid (linear)
  // rather than the labels inverted (nearest): smoother on a finer grid,
  // K float volumes of memory at full resolution.
  bool smooth_labels = false;
  bool statistics = false;     // per-class statistics of each result (statistics.h)
  // Progress of windows (done, total) and tuning (step, total, loss); may be empty.
  std::function<void(long, long)> window_progress;
  std::function<void(long, long, double)> tuning_progress;
  // Each warning as it happens (all are also in the report).
  std::function<void(const std::string&)> warn;
};

struct Segmentation {
  Image labels;                        // on the query's grid, the smallest type that holds the task's labels
  std::optional<Image> probabilities;  // [K, Z, Y, X] float32 on the query's grid, when asked
  std::vector<long> label_values;      // per class
  std::vector<std::string> class_names;
  std::vector<std::string> retrieved;  // retrieval strategies: the pool entries used
  std::vector<ClassStatistics> statistics;  // when asked
};

struct QueryReadOptions {
  std::string series;         // DICOM SeriesInstanceUID, when a folder holds several
  double nan_as = std::numeric_limits<double>::quiet_NaN();  // NaN/inf voxels: refuse (NaN) or replace
  std::string modality;       // the queries' modality ("" = DICOM tag or unknown)
};

// A query segment_files could not read or segment (a damaged series, a
// volume the model cannot take), and the error.
struct FailedQuery {
  std::string input, name, error;
};

class Segmenter {
 public:
  Segmenter(const std::string& model_path, TaskSpec task, SegmenterOptions options);
  // An ensemble of models: each encodes (or tunes, or retrieves) the task
  // itself, and the class probabilities are the mean of theirs weighted by
  // `weights` (empty: equal). One model gives exactly that model's result.
  // The models must store the same preprocessing (or `preprocess` names an
  // intensity scheme); stored tasks and pools belong to one model and are
  // refused; the window is at most the smallest model's patch.
  Segmenter(const std::vector<std::string>& model_paths, TaskSpec task, SegmenterOptions options,
            std::vector<double> weights = {});
  ~Segmenter();
  Segmenter(const Segmenter&) = delete;
  Segmenter& operator=(const Segmenter&) = delete;

  // One query image as read (its own grid; DICOM included).
  Segmentation segment(const Image& query, const std::string& name = "query");
  // Reads `path` (file or DICOM folder) and segments it.
  Segmentation segment_file(const std::string& path, const QueryReadOptions& read = {});
  // Every job: a reader thread reads the next query and a writer thread
  // writes the last results while the network runs on this one. `done` is
  // called (on the writer thread) after each job's files are written. A
  // query that cannot be read or segmented (iris::Error: bad input) is
  // listed in failed() and the report, and the others are done; other
  // errors (a full disk, out of memory) stop the run.
  void segment_files(const std::vector<QueryJob>& jobs, const QueryReadOptions& read = {},
                     const std::function<void(const QueryJob&)>& done = {});

  // The task every query gets (retrieval strategies: the initial one); of
  // the first model for an ensemble.
  const model::TaskEmbedding& task() const;
  // The retrieval pool (stored entries, then the given references).
  const EmbeddingPool& pool() const;
  const std::string& strategy() const;
  const model::IrisModel& model() const;
  // Per case (in the order segmented, named by case name): the statistics of
  // every segment() call so far, when options.statistics is set.
  const std::vector<std::pair<std::string, std::vector<ClassStatistics>>>& statistics() const;
  // The queries of segment_files runs that failed, in the order they failed.
  const std::vector<FailedQuery>& failed() const;
  // Run report: model, strategy, device, classes, timings per stage,
  // warnings, failed queries, tuning losses, retrieval choices, peak memory.
  Json report() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace iris::infer
