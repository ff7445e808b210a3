#pragma once
// Operations on label maps and images that prepare references and baselines
// (iris-labels, iris-infer's output): one implementation each.
#include <vector>

#include <ATen/Tensor.h>

#include "iris/common/image.h"
#include "iris/common/label_list.h"

namespace iris::io {

using iris::narrow_labels;  // common/label_list.h

// A label image on `like`'s grid holding `voxels`, narrowed as above.
Image label_image_like(const Image& like, const at::Tensor& voxels);

// Each voxel whose value falls in a mapping's range takes that mapping's value
// (later mappings win); every other voxel becomes `otherwise` (< 0 keeps it).
at::Tensor apply_label_mapping(const at::Tensor& labels, const std::vector<LabelMapping>& mappings,
                               long otherwise = 0);

// Otsu's threshold on a 256-bin histogram of the image's range. iris::Error
// naming `where` when the image is constant.
double otsu_threshold(const at::Tensor& volume, const std::string& where);

// Each voxel of `mask` ([Z, Y, X] bool) becomes the mean of its unmasked
// in-plane neighbours, layer by layer from the edge of the masked area
// inwards (e.g. text burnt into a test image). Float result.
at::Tensor inpaint_in_slices(const at::Tensor& voxels, const at::Tensor& mask);

}  // namespace iris::io
