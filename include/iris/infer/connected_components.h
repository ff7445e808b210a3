#pragma once
// Connected components of binary 3-D masks and the per-class clean-ups built
// on them (keep the largest object, drop specks). Plain C++ union-find on the
// voxel grid: no ITK, so it works in every build.
#include <vector>

#include <ATen/Tensor.h>

namespace iris::infer {

// 6 = voxels touching by a face; 26 = by a face, edge or corner.
enum class Connectivity { faces = 6, all = 26 };

struct ComponentLabels {
  at::Tensor labels;        // [Z, Y, X] int32: 0 = background, 1..N = component
  std::vector<long> sizes;  // voxels of component i + 1, components ordered by first voxel in raster order
};

// mask [Z, Y, X] of any dtype (non-zero = foreground), CPU.
ComponentLabels connected_components(const at::Tensor& mask, Connectivity connectivity = Connectivity::faces);

struct PostprocessOptions {
  bool keep_largest = false;      // keep only the largest component of each class
  long min_component_voxels = 0;  // drop components with fewer voxels (0 = keep all)
  Connectivity connectivity = Connectivity::faces;
  bool active() const { return keep_largest || min_component_voxels > 0; }
};

// Applies the options to each label value of a label map [Z, Y, X] (any
// integer dtype) separately; removed voxels become 0. Returns a new tensor of
// the same dtype. Label values not in `label_values` are left untouched.
at::Tensor postprocess_labels(const at::Tensor& label_map, const std::vector<long>& label_values,
                              const PostprocessOptions& options);

}  // namespace iris::infer
