// iris-preprocess: writes an image (and its labels) as the network sees them
// after preprocessing, so users can look at it; --inverse-check also maps the
// result back onto the input grid and reports how exact that is.
#include <chrono>
#include <iostream>
#include <sstream>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/atomic_file.h"
#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/infer/skull_strip.h"
#include "iris/io/image_io.h"
#include "iris/io/preprocess.h"

namespace {

// "out.nii.gz" -> "out_labels.nii.gz"
std::string labels_path_next_to(const std::string& output) {
  const std::string ext = iris::full_extension(output);
  return output.substr(0, output.size() - ext.size()) + "_labels" + ext;
}

std::string describe_steps(const iris::io::PreprocessedImage& p) {
  std::ostringstream s;
  s << "source       " << p.source_geometry.describe() << "\n";
  s << "reoriented   " << p.reoriented_geometry.describe();
  if (!p.reorientation.is_identity()) {
    s << "  (axes x<-" << p.reorientation.input_axis[0] << (p.reorientation.flipped[0] ? " flipped" : "")
      << ", y<-" << p.reorientation.input_axis[1] << (p.reorientation.flipped[1] ? " flipped" : "")
      << ", z<-" << p.reorientation.input_axis[2] << (p.reorientation.flipped[2] ? " flipped" : "") << ")";
  }
  s << "\ncropped      " << p.cropped_geometry.describe() << "  (box " << p.crop.begin[0] << ":"
    << p.crop.end[0] << ", " << p.crop.begin[1] << ":" << p.crop.end[1] << ", " << p.crop.begin[2] << ":"
    << p.crop.end[2] << ")\n";
  s << "preprocessed " << p.geometry.describe() << (p.resampled ? "" : "  (not resampled)") << "\n";
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  return iris::app::run_main("iris-preprocess", [&]() -> int {
    CLI::App app{"Write an image (and labels) as the network sees it after preprocessing"};
    std::string input, labels, output, labels_output, config_path;
    std::vector<std::string> overrides;
    std::string strip_model, strip_task, brain_mask_output, device_name = "cpu";
    bool inverse_check = false;
    int threads = 0;
    app.add_option("--input", input, "Image file or DICOM folder")->required();
    app.add_option("--labels", labels, "Label map on the image's grid");
    app.add_option("--output", output, "Preprocessed image to write (.nii.gz, .nrrd, .mha, ...)")->required();
    app.add_option("--output-labels", labels_output, "Preprocessed labels (default: <output>_labels.<ext>)");
    iris::app::add_config_options(app, config_path, overrides, {"preprocess"}, "the preprocessing");
    app.add_flag("--inverse-check", inverse_check,
                 "Map the result back onto the input grid and check geometry (and labels)");
    app.add_option("--skull-strip", strip_model, "Skull-strip the input first, by in-context "
                   "segmentation with this model (e.g. models/demo_brain.iris)");
    iris::app::name_settings({{"skull_strip_task", "--skull-strip-task"}});
    app.add_option("--skull-strip-task", strip_task, "The stored brain task for --skull-strip (e.g. "
                   "models/demo_brain.task; default: the one the model file stores, if any)");
    app.add_option("--brain-mask-output", brain_mask_output, "Write the brain mask of --skull-strip (on the input's "
                   "grid)");
    iris::app::add_device_option(app, device_name);
    iris::app::add_threads_option(app, threads);
    iris::app::add_verbosity(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e) == 0 ? 0 : iris::app::kUsage;
    }
    for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--skull-strip-task", &strip_task},
                                      {"--brain-mask-output", &brain_mask_output}})
      if (!value->empty() && strip_model.empty()) throw iris::Error(flag, "belongs to --skull-strip: it needs --skull-strip MODEL");
    iris::app::configure_threads(threads);
    const auto config = iris::io::PreprocessConfig::from_config(
        iris::read_config_sections(config_path, overrides, {"preprocess"})["preprocess"]);

    const auto start = std::chrono::steady_clock::now();
    iris::io::Image image = iris::io::read_image(input);
    for (const auto& w : image.warnings) iris::log::warn(input + ": " + w);
    if (!strip_model.empty()) {
      iris::infer::SkullStripOptions so;
      so.device = iris::resolve_device(device_name, iris::DistributedEnv::from_environment(),
                                       iris::visible_cuda_devices(), "--device");
      iris::infer::SkullStripResult stripped = iris::infer::skull_strip(image, strip_model, strip_task, so);
      std::cout << "skull strip: " << stripped.mask.voxels.sum().item<long>() << " brain voxels of "
                << image.voxels.numel() << "\n";
      if (!brain_mask_output.empty()) iris::io::write_image(stripped.mask, brain_mask_output);
      image = std::move(stripped.image);
    }
    const auto pre = iris::io::preprocess(image, config);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << describe_steps(pre) << "read + preprocess: " << seconds << " s\n";
    iris::io::write_image({pre.voxels, pre.geometry, input, {}}, output);

    int status = iris::app::kOk;
    if (inverse_check) {
      const auto back = iris::io::invert_to_source(pre.voxels, pre, /*is_label=*/false);
      const bool same = back.geometry.same_grid(image.geometry, 1e-4) &&
                        back.voxels.sizes() == image.voxels.sizes();
      std::cout << "inverse image grid: " << (same ? "same as the input" : "DIFFERS from the input") << "\n";
      if (!same) status = iris::app::kFailure;
    }
    if (!labels.empty()) {
      const iris::io::Image label_image = iris::io::read_labels(labels);
      const auto pre_labels = iris::io::preprocess_labels(label_image, pre);
      const std::string path = labels_output.empty() ? labels_path_next_to(output) : labels_output;
      iris::io::write_image({pre_labels.voxels, pre_labels.geometry, labels, {}}, path);
      if (inverse_check) {
        const auto back = iris::io::invert_to_source(pre_labels.voxels, pre_labels, /*is_label=*/true);
        const auto differing = (back.voxels != label_image.voxels).sum().item<int64_t>();
        std::cout << "inverse labels: " << differing << " of " << label_image.voxels.numel()
                  << " voxels differ from the input"
                  << (pre.resampled ? " (resampling moves label boundaries)" : "") << "\n";
        // Without resampling the round trip is pure index shuffling: exact.
        if (!pre.resampled && differing > 0) {
          const auto outside = (label_image.voxels != 0).sum().item<int64_t>() -
                               (back.voxels != 0).sum().item<int64_t>();
          std::cout << "  (" << outside << " labelled voxels lie outside the crop box)\n";
          status = iris::app::kFailure;
        }
      }
    }
    return status;
  });
}
