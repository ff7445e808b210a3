// iris-import: turn a checkpoint of the author's PyTorch implementation
// (torch.save of a state dict, bare or under model/ema_model/...) into a
// self-describing iris model file; with --trust-legacy, convert a model or
// task file of iris' first format (TorchScript archives, which can run code
// when opened) into the current one (safetensors, data only).
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/config_map.h"
#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/label_list.h"
#include "iris/common/log.h"
#include "iris/io/preprocess.h"
#include "iris/model/checkpoint_import.h"
#include "iris/model/model_file.h"
#include "iris/model/task_embedding.h"

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-import: convert a MASS/IRIS PyTorch checkpoint into an iris model file"};
  std::string checkpoint, output, config_path, key, names, skull_strip_task, preprocess_like;
  std::vector<std::string> overrides;
  bool trust_legacy = false;
  cli.add_option("checkpoint", checkpoint, "file written by torch.save")->required();
  cli.add_option("--output", output, "iris model file to write (.iris)")->required();
  app::add_config_options(cli, config_path, overrides, {"model", "preprocess"},
                          "model keys go on top of the architecture read off the checkpoint (head_dim is required), "
                          "preprocess keys are stored for iris-infer");
  cli.add_option("--state-dict-key", key, "take the weights from this entry (model, ema_model, ...)");
  cli.add_option("--preprocess-like", preprocess_like,
                 "store the preprocessing (spacing, orientation, intensity) of this iris model file; or give it as a "
                 "preprocess: section of --config, or --set preprocess.KEY=VALUE");
  cli.add_option("--class-names", names, "comma-separated names of the memory-bank entries, in id order");
  cli.add_flag("--trust-legacy", trust_legacy,
               "CHECKPOINT is a .iris or .task file of iris' first format: convert it once (opening such a file can "
               "run code it carries: only for files you trust)");
  cli.add_option("--skull-strip-task", skull_strip_task,
                 "CHECKPOINT is an iris model file: write it with this one-class brain task (iris-infer encode with "
                 "this model) as its skull-strip step, run first on every input of iris-infer; 'none' removes the step");
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);
  return app::run_main("iris-import", [&]() -> int {
    if (!skull_strip_task.empty()) {
      if (trust_legacy || !config_path.empty() || !overrides.empty() || !key.empty() || !names.empty() ||
          !preprocess_like.empty())
        throw Error("--skull-strip-task", "changes an iris model file: --trust-legacy, --config, --set, "
                                          "--state-dict-key and --class-names do not apply");
      model::IrisModel m = model::load_model(checkpoint);
      if (skull_strip_task == "none") {
        model::set_skull_strip(m, std::nullopt, skull_strip_task);
      } else {
        model::set_skull_strip(m, model::TaskEmbedding::load(skull_strip_task), skull_strip_task);
      }
      model::save_model(m, output);
      std::cout << "iris-import: " << output << " (fingerprint " << m.fingerprint << ") "
                << (m.skull_strip ? "strips the skull first with " + skull_strip_task : std::string("has no skull-strip step"))
                << "\n";
      return 0;
    }
    if (trust_legacy) {
      if (!config_path.empty() || !overrides.empty() || !key.empty() || !names.empty() || !preprocess_like.empty())
        throw Error("--trust-legacy", "converts a file as it is: --config, --set, --state-dict-key and --class-names do not apply");
      std::string kind;
      try {
        model::IrisModel legacy = model::load_legacy_model(checkpoint);
        model::save_model(legacy, output);
        kind = "model (fingerprint " + legacy.fingerprint + ")";
      } catch (const Error& as_model) {
        model::TaskEmbedding task;
        try {
          task = model::TaskEmbedding::load_legacy(checkpoint);
        } catch (const Error&) {
          throw Error(checkpoint, "is neither a model nor a task file of iris' first format (" + as_model.reason() + ")");
        }
        task.save(output);
        kind = "task of " + std::to_string(task.num_classes()) + " class(es)";
      }
      std::cout << "iris-import: converted " << kind << " -> " << output << "\n";
      return 0;
    }
    const std::string ext = full_extension(checkpoint);
    if (ext == ".iris" || ext == ".task")
      throw Error(checkpoint, "looks like an iris " + std::string(ext == ".iris" ? "model" : "task") +
                                  " file, not a PyTorch checkpoint: to convert one of iris' first format, add "
                                  "--trust-legacy (only for files you trust); to attach a skull-strip step to a model, "
                                  "--skull-strip-task");
    // The one --config/--set rule (config_map.h): model: and preprocess:
    // sections, a bare key being a model key.
    auto read = read_config_sections(config_path, overrides, {"model", "preprocess"});
    const ConfigMap& model_keys = read["model"];
    ConfigMap& preprocess_keys = read["preprocess"];
    if (!preprocess_like.empty()) {
      if (!preprocess_keys.entries().empty())
        throw Error("--preprocess-like", "give the preprocessing once: from a model file or from --config/--set, not both");
      const model::IrisModel like = model::load_model(preprocess_like);
      if (like.preprocess.empty()) throw Error(preprocess_like, "stores no preprocessing to copy (--preprocess-like)");
      preprocess_keys = ConfigMap::parse_text(like.preprocess, preprocess_like + " (preprocess)");
    }
    const model::ModelConfig config = model::import_config(checkpoint, model_keys, key);
    model::ImportReport report;
    model::IrisModel model = model::import_mass_checkpoint(checkpoint, config, &report, key);
    model.class_names = split_comma_list(names, /*keep_empty=*/true);
    if (!preprocess_keys.entries().empty())
      model.preprocess = io::PreprocessConfig::from_config(preprocess_keys).to_config().to_text();
    model::save_model(model, output);
    std::cout << "iris-import: " << report.tensors << " tensors"
              << (report.source_key.empty() ? "" : " from '" + report.source_key + "'") << ", "
              << model::count_parameters(*model.net) << " parameters -> " << output << " (fingerprint "
              << model.fingerprint << ")\n";
    std::cout << model.config.to_config().to_text();
    if (model.preprocess.empty())
      log::warn(output + " stores no preprocessing (spacing, orientation, intensity): iris-infer refuses it unless "
                         "--preprocess none or an intensity scheme is given. Import it with the preprocessing it was "
                         "trained with: --preprocess-like MODEL.iris, a preprocess: section in --config, or --set "
                         "preprocess.KEY=VALUE");
    else
      std::cout << "preprocessing:\n" << model.preprocess;
    return 0;
  });
}
