#pragma once
// Private to src/io: iris' own NIfTI-1 and NIfTI-2 reader and NIfTI-1
// writer, used by every build (the no-ITK build reads no other format). The
// geometry rules are ITK 5's, so that both builds place voxels identically
// (tests/io/nifti_agreement_itk_test.cpp holds them to it):
//   - spacing from pixdim (when a spacing is 0 or not finite, from the sform's
//     column lengths, else an error);
//   - the sform when its code is set and it is a rotation once its column
//     scales are removed, and the qform code is unset, or the sform code is
//     SCANNER_ANAT, or both forms agree; otherwise the qform; otherwise the
//     voxel grid at the origin;
//   - RAS in the file, LPS in iris (x and y negated).
// Every size is checked against the file before voxels are read.
#include <string>

#include <ATen/Tensor.h>

#include "iris/common/image.h"

namespace iris::io::detail {

// .nii or .nii.gz (by name).
bool is_nifti_path(const std::string& path);

// A volume as stored: voxels [Z,Y,X] in the file's own type (uint16 becomes
// int32, uint32 int64), byte order fixed, trailing singleton axes dropped.
struct NiftiVolume {
  Image image;               // voxels in the stored type, geometry in LPS
  double slope = 1.0, intercept = 0.0;  // scl_slope/scl_inter (1, 0 when unset)
  bool scaled() const { return !(slope == 1.0 && intercept == 0.0); }
};

// Reads a 3-D NIfTI-1/2 file (plain or gzipped, either byte order). Throws
// iris::Error naming the path for a file that is not NIfTI, is cut short or
// whose header points past its end, has an unsupported type, is not 3-D, or
// has no usable voxel size.
// `components`: a 4-D file (X, Y, Z, C) reads as voxels [C, Z, Y, X].
NiftiVolume read_nifti(const std::string& path, bool prefer_sform = false, bool components = false);

// Writes a NIfTI-1 file (.nii, or gzipped when the name ends .nii.gz) of a
// [Z,Y,X] or [C,Z,Y,X] uint8/int16/int32/float32 tensor, with qform and sform
// both set (SCANNER_ANAT), atomically and durably.
void write_nifti(const Image& image, const std::string& path);

// Decompresses the whole file once and throws iris::Error when the gzip
// stream is truncated or corrupt (ITK's readers do not notice).
void check_gzip_complete(const std::string& path);

}  // namespace iris::io::detail
