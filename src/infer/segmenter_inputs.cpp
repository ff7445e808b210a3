// Segmenter: reading references and queries into the model's space, and the
// model file's skull-strip step (segmenter_state.h).
#include <filesystem>

#include <ATen/ATen.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/log.h"
#include "iris/common/text.h"
#include "iris/infer/connected_components.h"
#include "iris/infer/reference.h"
#include "iris/infer/skull_strip.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
#include "iris/io/intensity.h"
#include "iris/io/label_ops.h"
#include "segmenter_state.h"

namespace iris::infer {

namespace fs = std::filesystem;

std::string segmenter_detail::input_modality(const std::string& path, const std::string& given,
                                             const std::string& series) {
  if (!given.empty()) return to_upper(given);
  if (!fs::is_directory(path)) return "";
  for (const auto& info : io::list_dicom_series(path))
    if (series.empty() || info.uid == series || info.series_instance_uid == series) return to_upper(info.modality);
  return "";
}

void Segmenter::State::warn(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(report_mutex);
    warnings.push_back(message);
  }
  if (options.warn) options.warn(message);
  else log::warn(message);
}

std::pair<Image, std::optional<io::PreprocessedImage>> Segmenter::State::to_model_space(const Image& image) const {
  if (!spatial) return {image, std::nullopt};
  io::PreprocessedImage pre = io::preprocess(image, *spatial);
  Image out;
  out.voxels = pre.voxels;
  out.geometry = pre.geometry;
  out.source = image.source;
  out.warnings = image.warnings;
  return {out, pre};
}

// The brain segmented with the model file's stored task (the first model's,
// for an ensemble) on the unstripped image, exactly as infer::skull_strip
// does it (largest component, holes filled, on the image's own grid), and the
// image set to 0 outside it.
Image Segmenter::State::strip_skull(const Image& image) {
  const auto t = Clock::now();
  const std::string what = image.source.empty() ? "image" : image.source;
  if (image.voxels.dim() != 3) throw Error(what, "skull stripping (the model's first step) needs a single-channel 3-D image");
  auto [model_space, pre] = to_model_space(image);
  const at::Tensor volume = io::normalise_intensity(model_space.voxels, intensity);
  SlidingWindowOptions w = window;
  w.progress = nullptr;
  w.classes_per_pass = 0;
  w.mirror_tta = false;           // the skull-strip step runs once, unmirrored
  if (w.batch <= 0) w.batch = 1;  // --window-batch auto is sized at the first query
  at::Tensor p;
  {
    compat::AutocastGuard autocast(options.device.type(), at::kBFloat16, options.bf16);
    p = sliding_window_probabilities(*members[0].model.net, volume, brain, w);
  }
  PostprocessOptions post;
  post.keep_largest = true;
  at::Tensor labels = postprocess_labels(labels_from_probabilities(p.to(at::kFloat), brain.labels, 0.5), brain.labels, post);
  if (pre) labels = io::invert_to_source(labels, *pre, true).voxels;
  Image out = strip_with_labels(image, labels,
                                "the skull-strip step of " + members[0].path +
                                    " found no brain (is it a head MR? " + setting_ref("no_skull_strip") + " skips the step)")
                  .image;
  timings.add("skull_strip", t);
  return out;
}

Segmenter::State::ReferencePair Segmenter::State::read_reference(size_t i) {
  if (i < reference_cache.size()) return reference_cache[i];
  auto t = Clock::now();
  ReferencePair pair{io::read_image(spec.references[i]), io::read_labels(spec.reference_masks[i]), spec.references[i]};
  // Counted before anything per label is made (resampling, masks).
  reference_label_values(pair.mask, labels.empty() ? spec.labels : labels, spec.max_labels);
  if (strip) {
    timings.add("read", t);
    io::check_same_grid(pair.image, pair.mask);
    pair.image = strip_skull(pair.image);
    t = Clock::now();
  }
  if (spatial) {
    io::check_same_grid(pair.image, pair.mask);
    auto [image, pre] = to_model_space(pair.image);
    io::PreprocessedImage mask = io::preprocess_labels(pair.mask, *pre);
    pair.image = image;
    pair.mask.voxels = mask.voxels;
    pair.mask.geometry = mask.geometry;
  }
  for (const auto& w : pair.image.warnings) warn(spec.references[i] + ": " + w);
  timings.add("read", t);
  const auto values = reference_label_values(pair.mask, labels.empty() ? spec.labels : labels, spec.max_labels);
  if (labels.empty()) labels = values;
  reference_cache.push_back(pair);
  return pair;
}

Image Segmenter::State::read_query(const std::string& path, const QueryReadOptions& read) {
  if (!reference_modality.empty()) {
    const std::string q = segmenter_detail::input_modality(path, read.modality, read.series);
    if (!q.empty() && q != reference_modality)
      warn(path + ": query modality " + q + " differs from the reference modality " + reference_modality +
           " (in-context segmentation across modalities is unreliable)");
  }
  const auto t = Clock::now();
  io::ImageReadOptions image_options;
  image_options.nan_as = read.nan_as;
  Image image = fs::is_directory(path) && !read.series.empty() ? io::read_dicom_series(path, read.series)
                                                               : io::read_image(path, image_options);
  for (const auto& w : image.warnings) warn(path + ": " + w);
  timings.add("read", t);
  return image;
}

}  // namespace iris::infer
