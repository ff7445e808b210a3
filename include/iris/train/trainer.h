#pragma once
// The training engine: episodic steps, Dice+BCE loss, Lamb/AdamW with warm-up
// and decay, gradient clipping, weight EMA, memory-bank EMA, validation,
// atomic checkpoints with exact resume, pre-emption handling, and gradient
// all-reduce across ranks.
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iris/common/config_map.h"
#include "iris/data/episodes.h"
#include "iris/model/iris_net.h"
#include "iris/train/communicator.h"
#include "iris/train/train_config.h"

namespace iris::data {
class EpisodePrefetcher;
}

namespace iris::train {

class TensorBoardWriter;

enum class TrainOutcome { kFinished, kPreempted };

// --resume: from output_dir/checkpoints/last.ckpt (kLast: an error when it is
// missing or damaged, naming the intact numbered checkpoint it could use);
// kAuto: last.ckpt if intact, else the newest intact iter_*.ckpt, else a
// fresh start when there is no checkpoint at all.
enum class ResumeMode { kNone, kLast, kAuto };

struct StepMetrics {
  long iteration = 0;
  double loss = 0, dice_loss = 0, bce_loss = 0, lr = 0, grad_norm = 0, seconds = 0;
  double data_seconds = 0;  // part of `seconds` spent waiting for the episode batch
};

// A validation: mean Dice over every valid class of the validation episodes
// (train.validation_episodes, shared out among the ranks), overall and per
// validation dataset, of the weights export_model() would write (the EMA
// shadow when train.weight_ema > 0).
struct ValidationResult {
  double dice = std::numeric_limits<double>::quiet_NaN();  // NaN: no validation data
  long classes = 0;                                          // valid classes scored
  std::vector<std::pair<std::string, double>> by_dataset;    // datasets with a scored class
};

// What rank 0 reports every train.log_every steps (the app draws it).
struct TrainProgress {
  const StepMetrics& step;
  long total_iterations;
  double steps_per_second;  // over the steps since the last report
  double eta_seconds;
  double val_dice;          // NaN when this step did not validate
  const std::vector<std::pair<std::string, double>>& val_by_dataset;  // empty when it did not
};

class Trainer {
 public:
  Trainer(TrainConfig config, model::ModelConfig model_config, ConfigMap resolved_config,
          data::EpisodeSampler train_sampler, std::optional<data::EpisodeSampler> val_sampler,
          std::vector<std::string> class_names, Communicator& comm);
  ~Trainer();

  // Trains until train.iterations or a stop request (SIGTERM/SIGUSR1, or
  // request_stop()). With resume, continues from output_dir/checkpoints/last.ckpt.
  TrainOutcome run(ResumeMode resume);
  TrainOutcome run(bool resume) { return run(resume ? ResumeMode::kLast : ResumeMode::kNone); }
  // Episodes per forward/backward pass on this rank (train.micro_batch, probed for auto).
  long micro_batch() const { return micro_batch_; }

  // Losses of the steps this process ran (rank-local view of the global loss).
  const std::vector<StepMetrics>& history() const { return history_; }
  model::IrisNet& net() { return net_; }
  std::string last_checkpoint() const;
  std::string final_model_path() const;

  // Makes SIGTERM and SIGUSR1 ask the running trainer to checkpoint and stop.
  static void install_signal_handlers();
  static void request_stop();
  // Stops after this iteration count (tests: simulate an interruption).
  void stop_after(long iteration) { stop_after_ = iteration; }
  // Called on rank 0 at every logged step; nothing is printed without it.
  void set_progress(std::function<void(const TrainProgress&)> progress) { progress_ = std::move(progress); }

  // Every rank must call it (one all-reduce); all get the same result.
  ValidationResult validate();

 private:
  void build_optimizer();
  void load_initial_weights();  // train.init_from
  // One step, in named parts: forward and backward over the micro-batches,
  // then clipping, schedule, optimiser and weight EMA, then the memory bank
  // and the per-dataset losses (each all-reduced across ranks).
  struct Passes;
  StepMetrics step(long iteration);
  Passes forward_backward(const data::EpisodeBatch& batch);
  void apply_update(long iteration, StepMetrics& metrics);
  void update_memory_bank(const data::EpisodeBatch& batch, const std::vector<at::Tensor>& tokens);
  void add_dataset_losses(const at::Tensor& by_dataset);
  long probe_micro_batch();
  void save_checkpoint(long next_iteration, bool final_copy);
  std::string choose_checkpoint(ResumeMode mode) const;
  long load_checkpoint(const std::string& path);
  void export_model();
  void log(const StepMetrics& m, const ValidationResult* val);

  TrainConfig config_;
  model::ModelConfig model_config_;
  ConfigMap resolved_;
  data::EpisodeSampler train_sampler_;
  std::optional<data::EpisodeSampler> val_sampler_;
  std::vector<std::string> class_names_;
  Communicator& comm_;
  model::IrisNet net_{nullptr};
  std::vector<std::pair<std::string, at::Tensor>> ema_;  // name -> shadow weights
  // name -> shadow of each floating-point buffer (the memory bank), averaged
  // with the same decay after each step, as the author's trainers average
  // model.buffers(); empty when train.weight_ema is 0.
  std::vector<std::pair<std::string, at::Tensor>> ema_buffers_;
  struct OptimizerHolder;
  std::unique_ptr<OptimizerHolder> opt_;
  std::vector<StepMetrics> history_;
  std::unique_ptr<data::EpisodePrefetcher> loader_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0, when train.tensorboard
  long stop_after_ = -1;
  std::function<void(const TrainProgress&)> progress_;
  long local_batch_ = 1;
  long micro_batch_ = 1;
  // Dice loss per dataset since the last log line (all ranks' episodes):
  // sums over valid classes and their counts, in train_sampler_'s order.
  std::vector<std::string> dataset_names_;
  std::vector<double> dataset_dice_sum_, dataset_classes_;
};

}  // namespace iris::train
