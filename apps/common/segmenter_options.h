#pragma once
// The flags of an infer::Segmenter, declared once for every program that
// runs one (iris-infer and its encode/pool, iris-rsna predict), with one set
// of checks: the models and the task's reference pairs, the preprocessing,
// the windows, the device.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "iris/infer/segmenter.h"

namespace iris::app {

// Where the flags go; the ones that need parsing after the command line are
// kept here as text.
struct SegmenterFlags {
  std::vector<std::string>* models = nullptr;  // --model (repeat for an ensemble)
  infer::TaskSpec* task = nullptr;             // --reference, --reference-mask, --task, --max-labels
  infer::SegmenterOptions* options = nullptr;  // --preprocess, --classes-per-pass, windows
  std::vector<double>* model_weights = nullptr;  // --model-weights (add_window_options)
  std::string labels;                            // --labels, e.g. 1,3
  std::string device = "cpu";                    // --device
  int threads = 0;                               // --threads
  // What the task's flags mean for this program (iris-rsna: label v = location v).
  std::string reference_mask_help = "reference label map, one per --reference";
  std::string labels_help = "label values to segment, e.g. 1,3 (default: all in the reference)";
  std::string task_help = "stored task embedding (from iris-infer encode)";
};

// --model, --reference, --reference-mask, --labels, --max-labels,
// --preprocess, --classes-per-pass, --device, --threads: what encoding a task
// needs.
void add_model_and_reference_options(CLI::App& app, SegmenterFlags& flags);

// --task, --model-weights, --window, --overlap, --window-batch (a number or
// auto), --bf16: what segmenting queries adds.
void add_window_options(CLI::App& app, SegmenterFlags& flags);

// After parsing: --model required, threads configured, --labels parsed into
// the task, --device resolved (torchrun/srun's LOCAL_RANK for "cuda").
void apply_segmenter_options(SegmenterFlags& flags);

}  // namespace iris::app
