// iris-train: episodic in-context training.
//   iris-train CONFIG.yaml [--set key=value ...] [--dump-config] [--resume[=auto]] [--fill-cache]
// Ranks and world size come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or
// srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), with MASTER_ADDR/PORT;
// the run itself is iris::pipeline::run_training.
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/pipeline/training_run.h"

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-train: episodic in-context training of an IRIS model"};
  std::string config_path, resume_mode;
  std::vector<std::string> overrides;
  bool dump = false, fill_cache = false;
  cli.add_option("config", config_path, "training config (YAML)")->required();
  cli.add_option("--set", overrides, "override a key: --set train.lr=1e-3 (repeatable)");
  cli.add_flag("--dump-config", dump, "print the resolved configuration and exit");
  CLI::Option* resume_option =
      cli.add_option("--resume", resume_mode,
                     "continue from OUTPUT_DIR/checkpoints/last.ckpt; --resume=auto: from the newest intact checkpoint "
                     "(last.ckpt, else iter_*.ckpt), or from scratch when there is none")
          ->expected(0, 1)
          ->check(CLI::IsMember({"", "last", "auto"}));
  cli.add_flag("--fill-cache", fill_cache,
               "preprocess every train/val case into data.cache and exit (for a build without ITK to train from)");
  app::name_settings({{"overrides", "--set"}, {"resume", "--resume"}, {"fill_cache_only", "--fill-cache"}});
  app::name_memory_settings("train.batch, train.patch and model.* (train.micro_batch splits a batch; "
                            "train.activation_checkpointing trades time for memory), and data.cache_memory_gb");
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-train", [&]() -> int {
    app::keep_freed_memory();  // cases are mapped from data.cache, not allocated: the heap holds transients only
    const ConfigMap config = pipeline::load_training_config(config_path, overrides);
    if (dump) {
      std::cout << pipeline::resolved_config_text(config);
      return app::kOk;
    }
    pipeline::TrainingRunOptions options;
    options.fill_cache_only = fill_cache;
    if (resume_option->count() > 0)
      options.resume = resume_mode == "auto" ? train::ResumeMode::kAuto : train::ResumeMode::kLast;
    options.progress = [](const train::TrainProgress& p) {
      std::ostringstream line;
      line << "iter " << (p.step.iteration + 1) << "/" << p.total_iterations << "  loss " << std::fixed
           << std::setprecision(4) << p.step.loss << " (dice " << p.step.dice_loss << ", bce " << p.step.bce_loss
           << ")  lr " << std::scientific << std::setprecision(2) << p.step.lr << std::fixed << "  "
           << std::setprecision(2) << p.steps_per_second << " it/s  ETA " << static_cast<long>(p.eta_seconds) << " s";
      if (!std::isnan(p.val_dice)) {
        line << "  val Dice " << std::setprecision(4) << p.val_dice;
        if (p.val_by_dataset.size() > 1) {
          const char* sep = " (";
          for (const auto& [name, value] : p.val_by_dataset) {
            line << sep << name << " " << value;
            sep = ", ";
          }
          line << ")";
        }
      }
      app::Info() << line.str();
    };
    const auto outcome = pipeline::run_training(config, options);
    return outcome == pipeline::RunOutcome::kPreempted ? app::kPreempted : app::kOk;
  });
}
