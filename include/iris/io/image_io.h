#pragma once
// Reading and writing 3-D medical images (NIfTI-1/2, NRRD, MetaImage, DICOM
// folders). ITK does the work behind this header; callers only see Image.
#include <string>

#include "iris/io/image.h"

namespace iris::io {

// Reads a 3-D scalar image as float32 voxels [Z,Y,X] with its LPS geometry.
// `path` may be a file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or a folder of
// DICOM files holding exactly one series (see dicom.h to choose among several).
// Throws iris::Error naming the path when the file is missing, unreadable,
// not 3-D (trailing axes of length 1 are dropped), has NaN/Inf voxels or a
// direction matrix that is not orthonormal.
Image read_image(const std::string& path);

// Same checks as read_image, but int32 voxels; throws when a voxel is not an
// integer or is outside the int32 range.
Image read_labels(const std::string& path);

// Writes voxels of dtype uint8, int16, int32 or float32 with their geometry.
// A [C,Z,Y,X] tensor becomes a 4-D image (x,y,z,c) whose 4th axis has spacing 1
// (e.g. per-class probability maps). The format follows the extension: .nii,
// .nii.gz, .nrrd, .mha, .mhd. The write is atomic: on failure nothing is left.
void write_image(const Image& image, const std::string& path);

// Throws iris::Error naming both sources and both geometries when `a` and `b`
// are not on the same voxel grid (size, spacing, origin, direction within tol).
void check_same_grid(const Image& a, const Image& b, double tol = 1e-4);

}  // namespace iris::io
