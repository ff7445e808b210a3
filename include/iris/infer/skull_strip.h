#pragma once
// Brain extraction by iris itself (iris-preprocess --skull-strip): a model and
// a stored one-class brain task (iris-infer encode of a T1 and its brain mask;
// models/demo_brain.task, encoded from Colin27, ships with the demo model)
// segment the brain in context; the largest component is kept, its holes
// are filled, and the image is set to 0 outside it (the convention of
// skull-stripped T1s, which the "mr" intensity scheme relies on).
#include <string>

#include <c10/core/Device.h>

#include "iris/common/image.h"

namespace iris::infer {

struct SkullStripOptions {
  c10::Device device{c10::kCPU};
  double threshold = 0.5;
};

struct SkullStripResult {
  Image image;  // the input's voxels inside the brain, 0 outside; the input's grid and type
  Image mask;   // uint8, 1 = brain
};

// iris::Error naming the model or task file when they do not fit (a task of
// another model, a task of more than one class). An empty `task_path` takes
// the model file's own skull-strip task (model::IrisModel::skull_strip).
SkullStripResult skull_strip(const Image& image, const std::string& model_path, const std::string& task_path,
                             const SkullStripOptions& options = {});

// The last step of both skull_strip and the model file's skull-strip step
// (segmenter.h): the brain segmentation `brain_labels` (the largest
// component, on the image's grid) with its holes filled, and the image set to
// 0 outside it; iris::Error naming the image with `no_brain` when it is empty.
SkullStripResult strip_with_labels(const Image& image, const at::Tensor& brain_labels, const std::string& no_brain);

// Background components of `mask` ([Z, Y, X], non-zero = inside) that do
// not touch the volume's border, added to it (uint8 result).
at::Tensor fill_holes(const at::Tensor& mask);

}  // namespace iris::infer
