// Without ITK, iris reads and writes NIfTI only; other formats are refused
// with a message that says which build reads them.
#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "image_checks.h"

namespace iris::io::detail {

Image read_with_itk(const std::string& path, bool) {
  throw Error(path, "is not a NIfTI file (" + (full_extension(path).empty() ? std::string("no extension") : full_extension(path)) +
                        "); this build of iris (without ITK) reads .nii and .nii.gz only: convert it, or use the ITK "
                        "build for NRRD, MetaImage and DICOM");
}

void write_with_itk(const at::Tensor&, const Geometry&, const std::string& path) {
  throw Error(path, "this build of iris (without ITK) writes .nii and .nii.gz only");
}

}  // namespace iris::io::detail
