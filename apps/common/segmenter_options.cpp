#include "common/segmenter_options.h"

#include "common/app_common.h"
#include "iris/common/error.h"
#include "iris/common/label_list.h"
#include "iris/io/intensity.h"

namespace iris::app {

void add_model_and_reference_options(CLI::App& app, SegmenterFlags& flags) {
  app.add_option("--model", *flags.models, "iris model file (.iris), required; repeat for an ensemble of models");
  app.add_option("--reference", flags.task->references, "reference image (repeat for a context ensemble)");
  app.add_option("--reference-mask", flags.task->reference_masks, flags.reference_mask_help);
  app.add_option("--labels", flags.labels, flags.labels_help);
  app.add_option("--max-labels", flags.task->max_labels,
                 "refuse a reference mask with more distinct label values")
      ->check(CLI::Range(1L, 100000L))
      ->capture_default_str();
  auto allowed = io::intensity_schemes();
  std::string schemes;
  for (const auto& scheme : allowed) schemes += ", " + scheme;
  allowed.push_back("model");
  app.add_option("--preprocess", flags.options->preprocess,
                 "model (the model file's stored preprocessing: reorient, resample, crop, intensity, inverted on "
                 "output), or an intensity scheme only: " + schemes.substr(2))
      ->check(CLI::IsMember(allowed))
      ->capture_default_str();
  app.add_option("--classes-per-pass", flags.options->classes_per_pass,
                 "encode (each group from its own reference window) and segment this many classes at a time "
                 "(default: all together)")
      ->check(CLI::NonNegativeNumber);
  add_device_option(app, flags.device);
  app.get_option("--device")->capture_default_str();
  add_threads_option(app, flags.threads);
  name_settings({{"models", "--model"},
                 {"references", "--reference"},
                 {"reference_masks", "--reference-mask"},
                 {"labels", "--labels"},
                 {"max_labels", "--max-labels"},
                 {"preprocess", "--preprocess"},
                 {"classes_per_pass", "--classes-per-pass"}});
}

void add_window_options(CLI::App& app, SegmenterFlags& flags) {
  app.add_option("--task", flags.task->task_file, flags.task_help);
  app.add_option("--model-weights", *flags.model_weights, "weights of the ensemble's models, e.g. 2,1 (default: equal)")
      ->delimiter(',')
      ->check(finite_number());
  app.add_option("--window", flags.options->window, "sliding-window edge (default: the model's patch size)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--overlap", flags.options->overlap, "sliding-window overlap")
      ->check(number_in(0.0, 0.95))
      ->capture_default_str();
  app.add_option("--window-batch", flags.options->window_batch,
                 "windows per network call, or auto (sized to the GPU's memory)")
      ->transform(CLI::Transformer({{"auto", "0"}}))
      ->check(CLI::Range(0L, 4096L))
      ->capture_default_str();
  app.add_flag("--bf16", flags.options->bf16, "bf16 autocast of the network (A100/H100/H200; float32 weights)");
  name_settings({{"task_file", "--task"},
                 {"model_weights", "--model-weights"},
                 {"window", "--window"},
                 {"overlap", "--overlap"},
                 {"window_batch", "--window-batch"},
                 {"bf16", "--bf16"}});
}

void apply_segmenter_options(SegmenterFlags& flags) {
  configure_threads(flags.threads);
  if (flags.models->empty()) throw Error("--model", "is required");
  if (!flags.labels.empty()) flags.task->labels = parse_label_values(flags.labels, "--labels");
  flags.options->device =
      resolve_device(flags.device, DistributedEnv::from_environment(), visible_cuda_devices(), "--device");
}

}  // namespace iris::app
