#pragma once
// Private to src/io: what ITK 5.2 lacks. Its NIfTI reader only knows NIfTI-1,
// and it does not notice a .gz file cut short, so both are done here with zlib.
#include <string>

#include "iris/io/image.h"

namespace iris::io::detail {

// True when the (possibly gzipped) file starts with a NIfTI-2 header.
bool is_nifti2(const std::string& path);

// Reads a 3-D NIfTI-2 file (either endianness, gzipped or not) as float64
// voxels [Z,Y,X] with scl_slope/scl_inter applied and LPS geometry (sform
// when its code is set, else qform, else pixdim only).
Image read_nifti2(const std::string& path);

// Decompresses the whole file once and throws iris::Error when the stream is
// truncated or corrupt.
void check_gzip_complete(const std::string& path);

}  // namespace iris::io::detail
