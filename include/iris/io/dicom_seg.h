#pragma once
// DICOM Segmentation objects (SEG, SOP Class 1.2.840.10008.5.1.4.1.1.66.4):
// a label map written as a binary SEG that references the DICOM series it was
// computed on, so that PACS and viewers show it over that series, and read
// back into a label map. DCMTK (dcmseg) does the encoding.
#include <map>
#include <string>
#include <vector>

#include "iris/common/image.h"

namespace iris::io {

// The toolkit-wide image types (common/image.h), as io's readers and writers hand them out.
using iris::Geometry;
using iris::Image;


struct DicomSegOptions {
  // Segment Label of each label value (e.g. 1 -> "liver"); values without a
  // name are labelled "label N".
  std::map<long, std::string> segment_names;
  std::string series_description = "iris segmentation";
  int series_number = 999;
  std::string content_label = "IRIS";  // (0070,0080), a DICOM CS: A-Z, 0-9, '_'
  std::string content_creator = "";    // (0070,0084) person name, may be empty
};

// Writes `labels` (an integer label map, [Z,Y,X]) as a binary DICOM-SEG at
// `output_path`. `labels` must lie on the exact grid of the series read by
// read_dicom_series(source_folder, series_uid) (size, spacing, origin and
// direction within 1e-4). One segment per non-zero label value present, in
// increasing value order; one frame per (segment, source slice) where that
// segment has voxels, so empty slices cost nothing. Each frame carries the
// ImagePositionPatient of its source slice and a derivation reference to that
// slice's SOP instance; patient, study and frame of reference come from the
// source; series and instance UIDs are new. The write is atomic. Throws
// iris::Error naming `output_path` when the grid differs, when no label is
// non-zero ("nothing to write"), or when the source is not a DICOM series.
void write_dicom_seg(const std::string& output_path, const Image& labels, const std::string& source_folder,
                     const std::string& series_uid = "", const DicomSegOptions& options = {});

struct DicomSegSegment {
  int segment_number = 0;  // (0062,0004), from 1
  long label_value = 0;    // value in DicomSeg::labels (see read_dicom_seg)
  std::string label;       // Segment Label
  std::string description;  // Segment Description ("" when absent)
  std::string algorithm_type;  // AUTOMATIC, SEMIAUTOMATIC, MANUAL
  std::string algorithm_name;
  std::string category_code, type_code;  // "code value^scheme^meaning"
  long frames = 0;         // frames of this segment in the file
};

struct DicomSeg {
  Image labels;  // int32 [Z,Y,X]
  std::vector<DicomSegSegment> segments;
  std::string referenced_series_uid;  // first item of ReferencedSeriesSequence ("" when none)
  std::string study_instance_uid, series_instance_uid, sop_instance_uid;
  std::string patient_id;
};

// Reads a binary SEG into a label map. Voxels take the label value iris wrote
// for each segment (recorded in its Segment Description as "iris label N"),
// else the Segment Number; where segments overlap, the higher number wins.
// With `grid` (e.g. the geometry of the referenced series) every frame is put
// on the slice of that grid at its position, which must match the grid's
// orientation and pixel spacing (1e-4) and lie within half a voxel of one of
// its slices (source positions are often rounded). Without it the grid spans
// the frames' slice positions, from the lowest along the normal to the highest,
// at the SEG's SpacingBetweenSlices (else the smallest step between frames).
// Throws iris::Error naming `path` for files that are not DICOM, not SEG, or
// fractional SEGs.
DicomSeg read_dicom_seg(const std::string& path, const Geometry* grid = nullptr);

}  // namespace iris::io
