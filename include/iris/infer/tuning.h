#pragma once
// In-context tuning: the network stays frozen and only the task embedding
// tensors are optimised (Adam/AdamW) on the training loss (Dice + BCE) over
// the labelled examples at hand. The result is an ordinary TaskEmbedding that
// can be stored and reused like an encoded one.
#include <functional>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include "iris/model/task_embedding.h"
#include "iris/model/losses.h"

namespace iris::infer {

// One labelled example: a normalised volume [Z, Y, X] and its binary masks
// [K, Z, Y, X] in the class order of the task being tuned.
struct TuningExample {
  at::Tensor image;
  at::Tensor masks;
};

struct TuningOptions {
  // Defaults chosen on the demo model (the measured Dice before and after
  // tuning: docs/log/demo_model_2026-12.md).
  long steps = 100;
  double learning_rate = 0.1;
  bool adamw = false;          // AdamW (decoupled weight decay) instead of Adam
  double weight_decay = 0.0;
  model::LossWeights loss;     // Dice/BCE weights
  c10::Device device = c10::Device(c10::kCPU);
  // > 0: the classes are tuned in groups of this many, each group on its own
  // (a window around that group's masks, its own optimiser), as
  // model::segment(..., classes_per_pass) decodes them. 0: all together.
  long classes_per_pass = 0;
  // Called after each step with (step, total, loss before that step); with
  // groups the steps run on across groups (total = groups x steps).
  std::function<void(long, long, double)> progress;
};

struct TuningResult {
  model::TaskEmbedding task;  // tuned, CPU, same labels/names/fingerprint as the initial task
  // losses[i] = loss before step i + 1; losses[steps] = loss of the returned
  // task. With groups: the mean over groups of their losses at that step.
  std::vector<double> losses;
};

// Each example is cropped to a model-sized window around its masks
// (crop_around_masks; around each group's masks with classes_per_pass). The
// network's parameters are frozen for the call and their requires_grad flags
// restored afterwards.
TuningResult tune_task_embedding(model::IrisNetImpl& net, const model::TaskEmbedding& initial,
                                 const std::vector<TuningExample>& examples, const TuningOptions& options);

// The loss tune_task_embedding optimises, for a given task (no gradients).
double tuning_loss(model::IrisNetImpl& net, const model::TaskEmbedding& task,
                   const std::vector<TuningExample>& examples, const TuningOptions& options);

}  // namespace iris::infer
