#pragma once
// Reading and writing 3-D medical images. NIfTI-1/2 (.nii, .nii.gz) is read
// and written by iris itself in every build; NRRD, MetaImage and DICOM
// folders need the ITK build (the other build refuses them, saying so).
// Callers only see Image.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "iris/common/file_names.h"
#include "iris/common/image.h"

namespace iris::io {

// The toolkit-wide image types (common/image.h), as io's readers and writers hand them out.
using iris::Geometry;
using iris::Image;


// File extensions and case names: common/file_names.h.
using iris::case_name;
using iris::has_image_extension;
using iris::image_extensions;

struct ImageReadOptions {
  // NaN and infinite voxels are an error (naming the file and the count)
  // unless this is finite: then they are replaced by it, with a warning.
  double nan_as = std::numeric_limits<double>::quiet_NaN();
  // NIfTI: take the sform whenever its code is set (FSL's and nibabel's
  // rule). By default iris follows ITK, which prefers the qform when both
  // are set with codes other than SCANNER_ANAT and disagree; some published
  // atlases (JHU, AICHA) then land upside down or shifted.
  bool prefer_sform = false;
  // read_image of a 4-D NIfTI file (X, Y, Z, C: iris-infer's probabilities)
  // gives voxels [C, Z, Y, X] instead of an error. NIfTI only.
  bool components = false;
};

// Reads a 3-D scalar image as float32 voxels [Z,Y,X] with its LPS geometry.
// `path` may be a file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or a folder of
// DICOM files holding exactly one series (see dicom.h to choose among several).
// Throws iris::Error naming the path when the file is missing, unreadable,
// cut short, not 3-D (trailing axes of length 1 are dropped), has NaN/Inf
// voxels, no usable voxel size, or a direction matrix that is not orthonormal.
Image read_image(const std::string& path, const ImageReadOptions& options = {});

// Same checks as read_image, but int32 voxels; throws when a voxel is not a
// whole number >= 0 or is above the int32 range, naming the value.
Image read_labels(const std::string& path, const ImageReadOptions& options = {});

// Writes voxels of dtype uint8, int16, int32 or float32 with their geometry.
// A [C,Z,Y,X] tensor becomes a 4-D image (x,y,z,c) whose 4th axis has spacing 1
// (e.g. per-class probability maps). The format follows the extension: .nii,
// .nii.gz, .nrrd, .mha, .mhd. The write is atomic: on failure nothing is left.
void write_image(const Image& image, const std::string& path);

// Throws iris::Error naming both sources and both geometries when `a` and `b`
// are not on the same voxel grid (size, spacing, origin, direction within tol).
void check_same_grid(const Image& a, const Image& b, double tol = 1e-4);

}  // namespace iris::io
