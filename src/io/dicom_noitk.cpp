// DICOM without ITK: refused with a message that says which build reads it.
#include "iris/common/error.h"
#include "iris/io/dicom.h"
#include "iris/io/dicom_seg.h"

namespace iris::io {

namespace {
[[noreturn]] void refuse(const std::string& what) {
  throw Error(what, "is a DICOM folder or file; this build of iris (without ITK) reads NIfTI only: convert the "
                    "series to NIfTI with the ITK build (iris-preprocess) and use the .nii.gz");
}
}  // namespace

std::vector<DicomSeriesInfo> list_dicom_series(const std::string& folder, bool, std::vector<DicomSkippedFile>*) {
  refuse(folder);
}

Image read_dicom_series(const std::string& folder, const std::string&, const DicomReadOptions&) { refuse(folder); }
std::array<double, 3> dicom_pixel_position(const std::string& file, double, double, long) { refuse(file); }
std::string find_dicom_instance(const std::string& folder, const std::string&) { refuse(folder); }

void write_dicom_seg(const std::string& output_path, const Image&, const std::string&, const std::string&,
                     const DicomSegOptions&) {
  throw Error(output_path, "DICOM-SEG output needs the ITK build of iris (DCMTK)");
}

DicomSeg read_dicom_seg(const std::string& path, const Geometry*) {
  throw Error(path, "reading DICOM-SEG needs the ITK build of iris (DCMTK)");
}

}  // namespace iris::io
