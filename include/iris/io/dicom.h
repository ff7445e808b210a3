#pragma once
// DICOM series: listing the series of a folder and reading one as a volume.
// Slices are sorted along the slice normal; RescaleSlope/Intercept are applied.
// Folders are scanned with DCMTK, which fails softly on anything odd, and
// only files that passed its checks reach the pixel decoder, so one stray or
// damaged file can never abort the process. Needs the ITK build.
#include <array>
#include <string>
#include <vector>

#include "iris/common/image.h"

namespace iris::io {

// The toolkit-wide image types (common/image.h), as io's readers and writers hand them out.
using iris::Geometry;
using iris::Image;


struct DicomSeriesInfo {
  // Identifier to pass to read_dicom_series. It is the SeriesInstanceUID,
  // extended by ".ROWSxCOLS" when one UID holds images of different shapes,
  // so that one volume never mixes them.
  std::string uid;
  std::string series_instance_uid;  // (0020,000E) as stored
  std::string description;          // (0008,103E)
  std::string modality;             // (0008,0060)
  int number_of_slices = 0;
  std::vector<std::string> files;  // sorted along the slice normal
  // One enhanced (multi-frame) file holds the whole volume: `files` is that
  // file, number_of_slices its frames, the geometry in its functional groups.
  bool multiframe = false;
  // Slices of this series that cannot be read (cut short, pixel data shorter
  // than its header says): file and reason. Reading the series fails naming them.
  std::vector<std::pair<std::string, std::string>> damaged;

  std::string describe() const;  // "UID | description | MR | 20 slices"
};

// A file of the folder that is not part of any image series, and why
// (not DICOM, a DICOMDIR index, an RT Dose grid, a structure set or report,
// a multi-frame or colour image).
struct DicomSkippedFile {
  std::string file, reason;
};

struct DicomReadOptions {
  // Slice spacing may vary a little (rounded positions); above these
  // fractions of the mean spacing we warn (Image::warnings) or refuse.
  double spacing_warn_fraction = 0.01;
  double spacing_error_fraction = 0.25;
  bool recursive = true;  // look into sub-folders too
};

// Every series under `folder`. Throws iris::Error when the folder is missing
// or holds no DICOM image. Files that are no image slices are listed in
// `skipped` (when given) with the reason.
std::vector<DicomSeriesInfo> list_dicom_series(const std::string& folder, bool recursive = true,
                                               std::vector<DicomSkippedFile>* skipped = nullptr);

// The series `series_uid` names (DicomSeriesInfo::uid, or the plain
// SeriesInstanceUID when unambiguous); "" = the only one. iris::Error naming
// `folder` and listing the series otherwise.
const DicomSeriesInfo& choose_dicom_series(const std::vector<DicomSeriesInfo>& series, const std::string& folder,
                                           const std::string& series_uid);

// Reads one series as float32 [Z,Y,X]. With an empty `series_uid` the folder
// must hold exactly one series; otherwise the error lists them. `series_uid`
// may be DicomSeriesInfo::uid or the plain SeriesInstanceUID when unambiguous.
Image read_dicom_series(const std::string& folder, const std::string& series_uid = "",
                        const DicomReadOptions& options = {});

// Patient-space position (LPS, mm) of the point at (column, row) of frame
// `frame` (0-based; 0 for a single-frame file) of the DICOM image `file`,
// as annotations give points: ImagePositionPatient + column * PixelSpacing[1]
// * row direction + row * PixelSpacing[0] * column direction, from the
// frame's functional groups in an enhanced file. Pixel centres are at whole
// numbers. iris::Error naming the file when it has no such geometry or the
// frame is out of range.
std::array<double, 3> dicom_pixel_position(const std::string& file, double column, double row, long frame = 0);

// The file under `folder` (any depth) holding SOP instance `sop_instance_uid`:
// FOLDER/UID.dcm when it carries that UID, else found by reading headers.
// iris::Error naming the folder and the UID when no file does.
std::string find_dicom_instance(const std::string& folder, const std::string& sop_instance_uid);

}  // namespace iris::io
