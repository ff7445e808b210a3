#include "iris/infer/skull_strip.h"

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/infer/connected_components.h"
#include "iris/infer/segmenter.h"
#include "iris/model/model_file.h"

namespace iris::infer {

at::Tensor fill_holes(const at::Tensor& mask) {
  const at::Tensor inside = mask.ne(0);
  const ComponentLabels outside = connected_components(inside.logical_not(), Connectivity::faces);
  // Components of the background that reach a face of the volume are the
  // outside; the others are holes.
  const at::Tensor& l = outside.labels;
  std::vector<bool> border(outside.sizes.size() + 1, false);
  for (const at::Tensor& face : {l.select(0, 0), l.select(0, l.size(0) - 1), l.select(1, 0), l.select(1, l.size(1) - 1),
                                 l.select(2, 0), l.select(2, l.size(2) - 1)}) {
    const at::Tensor ids = std::get<0>(at::_unique(face.reshape({-1})));
    const int32_t* p = ids.data_ptr<int32_t>();
    for (long i = 0; i < ids.numel(); ++i) border[p[i]] = true;
  }
  std::vector<uint8_t> hole(border.size(), 0);
  for (size_t i = 1; i < border.size(); ++i) hole[i] = border[i] ? 0 : 1;
  const at::Tensor table = at::tensor(std::vector<int64_t>(hole.begin(), hole.end()), at::kLong);
  const at::Tensor filled = table.index_select(0, l.reshape({-1}).to(at::kLong)).view(l.sizes()).ne(0);
  return (inside | filled).to(at::kByte);
}

SkullStripResult skull_strip(const Image& image, const std::string& model_path, const std::string& task_path,
                             const SkullStripOptions& o) {
  if (image.voxels.dim() != 3)
    throw Error(image.source.empty() ? "skull stripping" : image.source, "needs a single-channel 3-D image");
  TaskSpec task;
  {
    // The Segmenter's own refusal of a model without preprocessing offers a
    // setting that skull stripping does not have.
    const model::IrisModel m = model::load_model(model_path);
    if (m.preprocess.empty())
      throw InputError(model_path, "stores no preprocessing (spacing, orientation, intensity), which skull stripping "
                                   "needs: import it again with its preprocessing (iris-import --preprocess-like "
                                   "MODEL.iris, or preprocess: keys in --config)");
    if (task_path.empty() && !m.skull_strip)
      throw InputError(model_path, "stores no skull-strip task: give one (" + setting_ref("skull_strip_task") + "), or attach one with "
                                   "iris-import MODEL --skull-strip-task TASK --output MODEL2");
    if (task_path.empty()) task.task = *m.skull_strip;
    else task.task_file = task_path;
  }
  const std::string task_name = task_path.empty() ? model_path + " (its skull-strip task)" : task_path;
  SegmenterOptions options;
  options.skull_strip = false;  // the brain task runs on the head
  options.device = o.device;
  options.threshold = o.threshold;
  options.post.keep_largest = true;
  options.warn = [](const std::string&) {};
  Segmenter segmenter(model_path, task, options);
  if (segmenter.task().num_classes() != 1)
    throw Error(task_name, "has " + std::to_string(segmenter.task().num_classes()) +
                               " classes; skull stripping needs a task of one class, the brain");
  const Segmentation s = segmenter.segment(image, image.source.empty() ? "image" : image.source);
  return strip_with_labels(image, s.labels.voxels, "no brain found with " + task_name + " (is it a head MR of the task's kind?)");
}

SkullStripResult strip_with_labels(const Image& image, const at::Tensor& brain_labels, const std::string& no_brain) {
  const at::Tensor brain = fill_holes(brain_labels);
  if (!brain.any().item<bool>()) throw InputError(image.source.empty() ? "skull stripping" : image.source, no_brain);
  SkullStripResult r;
  r.mask.geometry = image.geometry;
  r.mask.voxels = brain;
  r.mask.source = image.source;
  r.image = image;
  r.image.voxels = image.voxels.masked_fill(brain.logical_not(), 0);
  return r;
}

}  // namespace iris::infer
