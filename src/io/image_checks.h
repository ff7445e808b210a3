#pragma once
// Private to src/io: the checks every reader applies to what it read, in
// every build (no ITK here).
#include <string>

#include <ATen/Tensor.h>

#include "iris/common/image.h"

namespace iris::io::detail {

// Throws iris::Error(source, ...) when the direction columns are not
// orthonormal or the spacing is not positive and finite.
void check_geometry(const Geometry& g, const std::string& source);

// Throws iris::Error(source, ...) when a voxel is NaN or infinite, unless
// `nan_as` is finite: then such voxels become that value (and a warning).
void check_finite(at::Tensor& voxels, const std::string& source, double nan_as, std::vector<std::string>* warnings);

// Images read by ITK (NRRD, MetaImage, DICOM) in the ITK build; the no-ITK
// build refuses them, naming the file and the build that reads it.
Image read_with_itk(const std::string& path, bool as_labels);
void write_with_itk(const at::Tensor& voxels, const Geometry& g, const std::string& path);

}  // namespace iris::io::detail
