#include "iris/io/dicom_seg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <torch/types.h>

#include <dcmtk/config/osconfig.h>  // DCMTK wants its configuration first
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmfg/fgderimg.h>
#include <dcmtk/dcmfg/fgfracon.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmfg/fgseg.h>
#include <dcmtk/dcmiod/iodreferences.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/dcmseg/segutils.h>
#include <dcmtk/oflog/oflog.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/io/dicom.h"
#include "dicom_slices.h"

namespace fs = std::filesystem;

namespace iris::io {

namespace {

constexpr const char* kSegmentationSopClass = UID_SegmentationStorage;  // 1.2.840.10008.5.1.4.1.1.66.4
constexpr const char* kSoftwareVersion = "0.1.0";  // project(iris VERSION ...) in CMakeLists.txt
// Segmented property category and type of every segment: SNOMED CT 91723000
// "Anatomical Structure" (CID 7150; the SRT code T-D000A before 2019). iris
// segments whatever the reference showed, so nothing more specific is known;
// the segment label carries the class name.
const char* const kStructureCode[3] = {"91723000", "SCT", "Anatomical Structure"};
// Segment Description of a segment written by iris; read_dicom_seg parses the
// label value back from it.
const std::string kLabelValuePrefix = "iris label ";

std::string text_of(const OFCondition& c) { return c.text() ? c.text() : "unknown DCMTK error"; }

void require(const OFCondition& c, const std::string& where, const std::string& what) {
  if (c.bad()) throw Error(where, what + ": " + text_of(c));
}

// DCMTK looks tags up by name in its data dictionary (a file it loads when
// first used); without it every element is unknown and nothing can be encoded.
void require_dictionary(const std::string& where) {
  if (!dcmDataDict.isDictionaryLoaded())
    throw Error(where, "DCMTK has no DICOM data dictionary (install libdcmtk17 or set DCMDICTPATH)");
}

// A value for a DICOM DS element (at most 16 characters), as precise as fits.
std::string decimal_string(double v) {
  if (std::abs(v) < 1e-12) v = 0;  // no "-1.2e-17" for exact zeros of a cross product
  char buf[40];
  for (int precision = 15; precision > 0; --precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::string(buf).size() <= 16) break;
  }
  return buf;
}

std::string new_uid(const char* root) {
  char buf[100];
  dcmGenerateUniqueIdentifier(buf, root);
  return buf;
}

std::string string_of(DcmItem& item, const DcmTagKey& tag, long pos = 0) {
  OFString value;
  item.findAndGetOFString(tag, value, pos);
  return value.c_str();
}

double dot(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}
std::array<double, 3> minus(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
}
std::array<double, 3> axis_of(const Geometry& g, int axis) {
  return {g.direction[axis], g.direction[3 + axis], g.direction[6 + axis]};
}

// One file of the source series, with what the SEG needs from its header.
struct SourceSlice {
  std::string file, sop_class_uid, sop_instance_uid;
  std::string position_text[3];  // ImagePositionPatient exactly as stored
  std::array<double, 3> position{};
};

struct SourceSeries {
  std::vector<SourceSlice> slices;  // slice k of `grid` is slices[k]
  Geometry grid;
  DcmFileFormat first_header;
};

std::vector<double> decimal_values(DcmItem& item, const DcmTagKey& tag, unsigned long count) {
  std::vector<double> values;
  for (unsigned long i = 0; i < count; ++i) {
    Float64 v = 0;
    if (item.findAndGetFloat64(tag, v, i).bad()) return {};
    values.push_back(v);
  }
  return values;
}

// Headers (not pixels) of the series' files, and the grid read_dicom_series
// builds from them: files in list_dicom_series order along the slice normal,
// origin at the first file, slice spacing the mean step along the normal.
// Computing it here spares reading every slice's pixels a second time.
SourceSeries read_source_series(const std::vector<std::string>& files, const std::string& output_path) {
  SourceSeries out;
  for (const std::string& file : files) {
    DcmFileFormat header;
    // Headers only: some files pad their pixels with megabytes that DCMTK
    // would otherwise parse element by element.
    require(header.loadFileUntilTag(file.c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_autoDetect, DCM_PixelData),
            output_path, "cannot read source slice " + file);
    DcmDataset& ds = *header.getDataset();
    SourceSlice s;
    s.file = file;
    s.sop_class_uid = string_of(ds, DCM_SOPClassUID);
    s.sop_instance_uid = string_of(ds, DCM_SOPInstanceUID);
    const auto position = decimal_values(ds, DCM_ImagePositionPatient, 3);
    if (position.size() != 3)
      throw Error(output_path, "source slice " + file + " has no valid ImagePositionPatient");
    for (int i = 0; i < 3; ++i) {
      s.position_text[i] = string_of(ds, DCM_ImagePositionPatient, i);
      s.position[i] = position[i];
    }
    if (s.sop_class_uid.empty() || s.sop_instance_uid.empty())
      throw Error(output_path, "source slice " + file + " lacks its SOP Class or SOP Instance UID");
    if (out.slices.empty()) out.first_header = header;
    out.slices.push_back(std::move(s));
  }
  const auto& slices = out.slices;
  if (slices.size() < 2) throw Error(output_path, "the source series has a single slice; a 3-D series is needed");

  DcmDataset& first = *out.first_header.getDataset();
  const auto orientation = decimal_values(first, DCM_ImageOrientationPatient, 6);
  const auto pixel_spacing = decimal_values(first, DCM_PixelSpacing, 2);
  Uint16 rows = 0, columns = 0;
  first.findAndGetUint16(DCM_Rows, rows);
  first.findAndGetUint16(DCM_Columns, columns);
  if (orientation.size() != 6 || pixel_spacing.size() != 2 || rows == 0 || columns == 0)
    throw Error(output_path, "source slice " + slices[0].file +
                                 " lacks ImageOrientationPatient, PixelSpacing, Rows or Columns");
  std::array<double, 3> row{orientation[0], orientation[1], orientation[2]};
  std::array<double, 3> col{orientation[3], orientation[4], orientation[5]};
  for (auto* v : {&row, &col}) {
    const double length = std::sqrt(dot(*v, *v));
    if (!(length > 0.5)) throw Error(output_path, "source slice " + slices[0].file + " has an invalid orientation");
    for (double& c : *v) c /= length;
  }
  // The reader's own rule for the slice normal and step (dicom_slices.h).
  std::vector<std::array<double, 3>> positions;
  for (const auto& s : slices) positions.push_back(s.position);
  const detail::SliceStack stack = detail::slice_stack(positions, orientation, output_path, "the source series");
  const std::array<double, 3>& normal = stack.normal;
  // Frames carry each slice's own position, so uneven steps (which the
  // reader accepted within its tolerance) are fine; only the order matters.
  for (size_t k = 1; k < slices.size(); ++k)
    if (!(dot(slices[k].position, normal) > dot(slices[k - 1].position, normal)))
      throw Error(output_path, "source slice " + slices[k].file + " is out of order along the slice normal");

  Geometry& g = out.grid;
  g.size = {columns, rows, static_cast<long>(slices.size())};
  g.spacing = {pixel_spacing[1], pixel_spacing[0], stack.mean_step};  // PixelSpacing is (between rows, between columns)
  g.origin = slices.front().position;
  for (int r = 0; r < 3; ++r) {
    g.direction[3 * r + 0] = row[r];
    g.direction[3 * r + 1] = col[r];
    g.direction[3 * r + 2] = normal[r];
  }
  return out;
}

// DCMTK logs oddities of the files it parses (padding after the pixels, the
// stop before them) as warnings on stderr; iris reports real problems as
// errors, so only DCMTK's errors are let through.
void quiet_dcmtk_warnings() {
  static const bool once = [] {
    OFLog::getLogger("dcmtk").setLogLevel(OFLogger::ERROR_LOG_LEVEL);
    // As the series reader does: nothing iris reads comes after the pixels.
    dcmStopParsingAfterElement.set(DCM_PixelData);
    return true;
  }();
  (void)once;
}

}  // namespace

void write_dicom_seg(const std::string& output_path, const Image& labels, const std::string& source_folder,
                     const std::string& series_uid, const DicomSegOptions& options) {
  require_dictionary(output_path);
  quiet_dcmtk_warnings();
  if (labels.voxels.dim() != 3)
    throw Error(output_path, "a DICOM-SEG needs a 3-D label map [Z,Y,X], got " +
                                 std::to_string(labels.voxels.dim()) + " dimensions");
  at::Tensor values = labels.voxels;
  if (values.is_floating_point() && !at::equal(values, values.round()))
    throw Error(output_path, "the label map has non-integer values");
  values = values.to(at::kLong).contiguous();
  const at::Tensor present = std::get<0>(at::_unique(values.masked_select(values.ne(0)), true));
  if (present.numel() == 0)
    throw Error(output_path, "nothing to write: the label map has no non-zero voxel");
  if (present.min().item<long>() < 0)
    throw Error(output_path, "negative label values cannot become DICOM segments");
  if (present.numel() > DCM_SEG_MAX_SEGMENTS)
    throw Error(output_path, "too many label values for one SEG (" + std::to_string(present.numel()) + ")");

  // The grid must be the source series' own (as read_dicom_series builds it), voxel for voxel.
  std::vector<DicomSeriesInfo> series;
  try {
    series = list_dicom_series(source_folder);
  } catch (const Error& e) {
    throw Error(output_path, std::string("cannot reference the source DICOM series: ") + e.what());
  }
  const DicomSeriesInfo* chosen = nullptr;
  try {
    chosen = &choose_dicom_series(series, source_folder, series_uid);
  } catch (const Error& e) {
    throw Error(output_path, std::string("cannot reference the source DICOM series: ") + e.what());
  }
  SourceSeries source = read_source_series(chosen->files, output_path);
  const Geometry& grid = source.grid;
  const std::vector<SourceSlice>& slices = source.slices;
  const std::array<long, 3> shape{values.size(2), values.size(1), values.size(0)};
  if (shape != grid.size || !labels.geometry.same_grid(grid, 1e-4))
    throw Error(output_path, "the label map is not on the grid of DICOM series " + source_folder + ": labels " +
                                 labels.geometry.describe() + " (voxels " + std::to_string(shape[0]) + "x" +
                                 std::to_string(shape[1]) + "x" + std::to_string(shape[2]) + "), series " +
                                 grid.describe());
  DcmDataset& first = *source.first_header.getDataset();

  // -- The object: equipment, content, patient/study/frame of reference --
  const IODGeneralEquipmentModule::EquipmentInfo equipment("iris", "iris", "none", kSoftwareVersion);
  ContentIdentificationMacro content;
  require(content.setInstanceNumber("1"), output_path, "content identification");
  require(content.setContentLabel(options.content_label.c_str()), output_path, "content label");
  require(content.setContentDescription(options.series_description.c_str()), output_path, "content description");
  require(content.setContentCreatorName(options.content_creator.c_str()), output_path, "content creator");
  DcmSegmentation* created = nullptr;
  require(DcmSegmentation::createBinarySegmentation(created, static_cast<Uint16>(grid.size[1]),
                                                    static_cast<Uint16>(grid.size[0]), equipment, content),
          output_path, "cannot create a segmentation object");
  std::unique_ptr<DcmSegmentation> seg(created);
  // Patient, study and frame of reference (same StudyInstanceUID, PatientID, ...).
  require(seg->importFromSourceImage(first), output_path, "cannot take patient and study from " + slices[0].file);
  const std::string study_uid = string_of(first, DCM_StudyInstanceUID);
  const std::string source_series_uid = string_of(first, DCM_SeriesInstanceUID);
  const std::string patient_id = string_of(first, DCM_PatientID);
  require(seg->getSeries().setSeriesInstanceUID(new_uid(SITE_SERIES_UID_ROOT).c_str()), output_path, "series UID");
  require(seg->getSeries().setSeriesNumber(std::to_string(options.series_number).c_str()), output_path,
          "series number");
  require(seg->getSeries().setSeriesDescription(options.series_description.c_str()), output_path,
          "series description");
  require(seg->getSOPCommon().setSOPInstanceUID(new_uid(SITE_INSTANCE_UID_ROOT).c_str()), output_path,
          "SOP instance UID");

  // -- Shared functional groups: orientation and pixel measures --
  {
    std::string iop[6];
    for (int i = 0; i < 6; ++i) iop[i] = string_of(first, DCM_ImageOrientationPatient, i);
    FGPlaneOrientationPatient orientation;
    require(orientation.setImageOrientationPatient(iop[0].c_str(), iop[1].c_str(), iop[2].c_str(), iop[3].c_str(),
                                                   iop[4].c_str(), iop[5].c_str()),
            output_path, "image orientation");
    require(seg->addForAllFrames(orientation), output_path, "image orientation");
    FGPixelMeasures measures;
    // PixelSpacing is (between rows, between columns) = (y, x).
    const std::string pixel_spacing = decimal_string(grid.spacing[1]) + "\\" + decimal_string(grid.spacing[0]);
    std::string thickness = string_of(first, DCM_SliceThickness);
    if (thickness.empty()) thickness = decimal_string(grid.spacing[2]);
    require(measures.setPixelSpacing(pixel_spacing.c_str()), output_path, "pixel spacing");
    require(measures.setSliceThickness(thickness.c_str()), output_path, "slice thickness");
    require(measures.setSpacingBetweenSlices(decimal_string(grid.spacing[2]).c_str()), output_path,
            "spacing between slices");
    require(seg->addForAllFrames(measures), output_path, "pixel measures");
  }

  // Frames are indexed by (segment, slice position along the normal).
  const std::string dimension_uid = new_uid(SITE_INSTANCE_UID_ROOT);
  require(seg->getDimensions().addDimensionIndex(DCM_ReferencedSegmentNumber, dimension_uid.c_str(),
                                                 DCM_SegmentIdentificationSequence, "ReferencedSegmentNumber"),
          output_path, "dimension index");
  require(seg->getDimensions().addDimensionIndex(DCM_ImagePositionPatient, dimension_uid.c_str(),
                                                 DCM_PlanePositionSequence, "ImagePositionPatient"),
          output_path, "dimension index");

  // -- Segments and their frames --
  const CodeSequenceMacro structure(kStructureCode[0], kStructureCode[1], kStructureCode[2]);
  const long slice_pixels = grid.size[0] * grid.size[1];
  for (long value : std::vector<long>(present.data_ptr<long>(), present.data_ptr<long>() + present.numel())) {
    const auto named = options.segment_names.find(value);
    const std::string name = named != options.segment_names.end() && !named->second.empty()
                                 ? named->second
                                 : "label " + std::to_string(value);
    DcmSegment* segment = nullptr;
    require(DcmSegment::create(segment, name.substr(0, 64).c_str(), structure, structure,
                               DcmSegTypes::SAT_AUTOMATIC, "iris"),
            output_path, "cannot describe segment '" + name + "'");
    std::unique_ptr<DcmSegment> owned(segment);
    require(segment->setSegmentDescription((kLabelValuePrefix + std::to_string(value)).c_str()), output_path,
            "segment description");
    Uint16 segment_number = 0;
    require(seg->addSegment(segment, segment_number), output_path, "cannot add segment '" + name + "'");
    owned.release();  // the segmentation owns it now

    const at::Tensor mask = values.eq(value).to(at::kByte).contiguous();
    const at::Tensor slice_has_voxels = mask.view({grid.size[2], slice_pixels}).amax(1);
    for (long k = 0; k < grid.size[2]; ++k) {
      if (slice_has_voxels[k].item<uint8_t>() == 0) continue;
      const SourceSlice& slice = slices[k];
      FGPlanePosPatient position;
      require(position.setImagePositionPatient(slice.position_text[0].c_str(), slice.position_text[1].c_str(),
                                               slice.position_text[2].c_str()),
              output_path, "image position of " + slice.file);
      FGFrameContent frame_content;
      require(frame_content.setDimensionIndexValues(segment_number, 0), output_path, "dimension index values");
      require(frame_content.setDimensionIndexValues(static_cast<Uint32>(k + 1), 1), output_path,
              "dimension index values");
      ImageSOPInstanceReferenceMacro source_image;
      require(source_image.setReferencedSOPClassUID(slice.sop_class_uid.c_str()), output_path,
              "SOP Class UID of " + slice.file);
      require(source_image.setReferencedSOPInstanceUID(slice.sop_instance_uid.c_str()), output_path,
              "SOP Instance UID of " + slice.file);
      std::unique_ptr<FGDerivationImage> derivation(DcmSegmentation::createDerivationImageFG(
          OFVector<ImageSOPInstanceReferenceMacro>(1, source_image), "iris in-context segmentation"));
      if (!derivation) throw Error(output_path, "cannot reference source slice " + slice.file);
      const OFVector<FGBase*> per_frame{&position, &frame_content, derivation.get()};
      Uint8* pixels = mask.data_ptr<uint8_t>() + k * slice_pixels;
      require(seg->addFrame(pixels, segment_number, per_frame), output_path,
              "cannot add the frame of slice " + std::to_string(k));
    }
  }

  // ReferencedSeriesSequence: every source slice, in the source series.
  IODReferences references;
  for (const SourceSlice& slice : slices)
    references.add(new IODImageReference(patient_id.c_str(), study_uid.c_str(), source_series_uid.c_str(),
                                         slice.sop_instance_uid.c_str(), slice.sop_class_uid.c_str()));
  if (seg->getCommonInstanceReference().addReferences(references, study_uid.c_str()) != slices.size())
    throw Error(output_path, "cannot reference the slices of series " + source_series_uid);

  write_atomically(output_path, [&](const std::string& tmp) {
    require(seg->saveFile(tmp.c_str(), EXS_LittleEndianExplicit), output_path, "cannot write the DICOM-SEG");
  });
}

namespace {

std::string code_text(CodeSequenceMacro& code) {
  OFString value, scheme, meaning;
  code.getCodeValue(value);
  code.getCodingSchemeDesignator(scheme);
  code.getCodeMeaning(meaning);
  return std::string(value.c_str()) + "^" + scheme.c_str() + "^" + meaning.c_str();
}

std::array<double, 3> position_of(FGPlanePosPatient& fg) {
  Float64 x = 0, y = 0, z = 0;
  fg.getImagePositionPatient(x, y, z);
  return {x, y, z};
}

}  // namespace

DicomSeg read_dicom_seg(const std::string& path, const Geometry* grid) {
  require_dictionary(path);
  quiet_dcmtk_warnings();
  if (!fs::is_regular_file(path)) throw Error(path, "DICOM-SEG file not found");
  {
    // The header first, so that other objects are refused without parsing their pixels.
    DcmFileFormat header;
    if (header.loadFileUntilTag(path.c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_autoDetect, DCM_PixelData).bad())
      throw Error(path, "is not a DICOM file");
    DcmDataset& ds = *header.getDataset();
    const std::string sop_class = string_of(ds, DCM_SOPClassUID);
    if (sop_class != kSegmentationSopClass)
      throw Error(path, "is not a DICOM Segmentation (SOP Class UID " +
                            (sop_class.empty() ? std::string("missing") : sop_class) + ", modality " +
                            string_of(ds, DCM_Modality) + "; a SEG has " + kSegmentationSopClass + ")");
  }
  DcmFileFormat file;
  require(file.loadFile(path.c_str()), path, "cannot read the DICOM-SEG");
  DcmDataset& ds = *file.getDataset();
  const std::string type = string_of(ds, DCM_SegmentationType);
  if (type != "BINARY") throw Error(path, "only BINARY segmentations are read; this one is " + type);

  DicomSeg out;
  out.study_instance_uid = string_of(ds, DCM_StudyInstanceUID);
  out.series_instance_uid = string_of(ds, DCM_SeriesInstanceUID);
  out.sop_instance_uid = string_of(ds, DCM_SOPInstanceUID);
  out.patient_id = string_of(ds, DCM_PatientID);
  DcmItem* referenced = nullptr;
  if (ds.findAndGetSequenceItem(DCM_ReferencedSeriesSequence, referenced, 0).good() && referenced)
    out.referenced_series_uid = string_of(*referenced, DCM_SeriesInstanceUID);
  Uint16 rows = 0, columns = 0;
  ds.findAndGetUint16(DCM_Rows, rows);
  ds.findAndGetUint16(DCM_Columns, columns);

  DcmSegmentation* loaded = nullptr;
  const OFCondition status = DcmSegmentation::loadDataset(ds, loaded);
  std::unique_ptr<DcmSegmentation> seg(loaded);
  require(status, path, "cannot read the segmentation");
  const size_t frames = seg->getNumberOfFrames();
  if (frames == 0 || rows == 0 || columns == 0) throw Error(path, "the segmentation has no frames");

  // Segments, and the value each gets in the label map.
  std::map<int, size_t> index_of_segment;
  for (size_t n = 1; n <= seg->getNumberOfSegments(); ++n) {
    DcmSegment* segment = seg->getSegment(n);
    if (!segment) continue;
    DicomSegSegment info;
    info.segment_number = static_cast<int>(segment->getSegmentNumber());
    if (info.segment_number == 0) info.segment_number = static_cast<int>(n);
    OFString text;
    segment->getSegmentLabel(text);
    info.label = text.c_str();
    segment->getSegmentDescription(text);
    info.description = text.c_str();
    info.algorithm_type = DcmSegTypes::algoType2OFString(segment->getSegmentAlgorithmType()).c_str();
    segment->getSegmentAlgorithmName(text);
    info.algorithm_name = text.c_str();
    info.category_code = code_text(segment->getSegmentedPropertyCategoryCode());
    info.type_code = code_text(segment->getSegmentedPropertyTypeCode());
    info.label_value = info.segment_number;
    if (info.description.rfind(kLabelValuePrefix, 0) == 0) {
      try {
        info.label_value = std::stol(info.description.substr(kLabelValuePrefix.size()));
      } catch (const std::exception&) {
      }
    }
    index_of_segment[info.segment_number] = out.segments.size();
    out.segments.push_back(info);
  }

  // Geometry of the frames: orientation and pixel spacing, shared or per frame.
  FGInterface& groups = seg->getFunctionalGroups();
  auto* orientation = dynamic_cast<FGPlaneOrientationPatient*>(groups.get(0, DcmFGTypes::EFG_PLANEORIENTPATIENT));
  auto* measures = dynamic_cast<FGPixelMeasures*>(groups.get(0, DcmFGTypes::EFG_PIXELMEASURES));
  if (!orientation || !measures) throw Error(path, "frames lack plane orientation or pixel measures");
  Float64 rx = 0, ry = 0, rz = 0, cx = 0, cy = 0, cz = 0;
  orientation->getImageOrientationPatient(rx, ry, rz, cx, cy, cz);
  std::array<double, 3> row{rx, ry, rz}, col{cx, cy, cz};
  for (auto* v : {&row, &col}) {
    const double length = std::sqrt(dot(*v, *v));
    if (!(length > 0.5)) throw Error(path, "invalid ImageOrientationPatient");
    for (double& c : *v) c /= length;
  }
  Float64 row_spacing = 0, column_spacing = 0, between = 0;
  measures->getPixelSpacing(row_spacing, 0);
  measures->getPixelSpacing(column_spacing, 1);
  if (!(row_spacing > 0 && column_spacing > 0)) throw Error(path, "invalid PixelSpacing");

  struct FrameSpot {
    size_t frame;
    int segment_number;
    std::array<double, 3> position;
  };
  std::vector<FrameSpot> spots;
  for (size_t f = 0; f < frames; ++f) {
    auto* position = dynamic_cast<FGPlanePosPatient*>(groups.get(static_cast<Uint32>(f), DcmFGTypes::EFG_PLANEPOSPATIENT));
    auto* identification = dynamic_cast<FGSegmentation*>(groups.get(static_cast<Uint32>(f), DcmFGTypes::EFG_SEGMENTATION));
    Uint16 number = 0;
    if (!position || !identification || identification->getReferencedSegmentNumber(number).bad())
      throw Error(path, "frame " + std::to_string(f + 1) + " lacks its position or segment number");
    if (!index_of_segment.count(number))
      throw Error(path, "frame " + std::to_string(f + 1) + " refers to undefined segment " + std::to_string(number));
    spots.push_back({f, number, position_of(*position)});
  }

  Geometry g;
  if (grid) {
    g = *grid;
    const double tol = 1e-4;
    const auto grid_row = axis_of(g, 0), grid_col = axis_of(g, 1);
    if (g.size[0] != columns || g.size[1] != rows || std::abs(g.spacing[0] - column_spacing) > tol ||
        std::abs(g.spacing[1] - row_spacing) > tol || std::abs(dot(grid_row, row) - 1) > tol ||
        std::abs(dot(grid_col, col) - 1) > tol)
      throw Error(path, "its frames (" + std::to_string(columns) + "x" + std::to_string(rows) + " @ " +
                            decimal_string(column_spacing) + "x" + decimal_string(row_spacing) +
                            " mm) are not slices of the grid " + g.describe());
  } else {
    std::array<double, 3> normal{row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
                                 row[0] * col[1] - row[1] * col[0]};
    const double length = std::sqrt(dot(normal, normal));
    for (double& c : normal) c /= length;
    std::vector<double> along;
    for (const auto& s : spots) along.push_back(dot(s.position, normal));
    const size_t lowest = static_cast<size_t>(std::min_element(along.begin(), along.end()) - along.begin());
    std::vector<double> sorted = along;
    std::sort(sorted.begin(), sorted.end());
    if (measures->getSpacingBetweenSlices(between).bad() || !(between > 0)) {
      between = 0;
      for (size_t i = 1; i < sorted.size(); ++i)
        if (sorted[i] - sorted[i - 1] > 1e-3 && (between == 0 || sorted[i] - sorted[i - 1] < between))
          between = sorted[i] - sorted[i - 1];
      Float64 thickness = 0;
      if (between == 0) between = measures->getSliceThickness(thickness).good() && thickness > 0 ? thickness : 1.0;
    }
    g.size = {columns, rows, std::lround((sorted.back() - sorted.front()) / between) + 1};
    g.spacing = {column_spacing, row_spacing, between};
    g.origin = spots[lowest].position;
    for (int r = 0; r < 3; ++r) {
      g.direction[3 * r + 0] = row[r];
      g.direction[3 * r + 1] = col[r];
      g.direction[3 * r + 2] = normal[r];
    }
  }

  // Each frame onto its slice; frames of higher segment numbers last (they win).
  std::stable_sort(spots.begin(), spots.end(),
                   [](const FrameSpot& a, const FrameSpot& b) { return a.segment_number < b.segment_number; });
  const auto normal = axis_of(g, 2);
  at::Tensor voxels = at::zeros({g.size[2], g.size[1], g.size[0]}, at::kInt);
  const long slice_pixels = g.size[0] * g.size[1];
  for (const FrameSpot& s : spots) {
    const auto offset = minus(s.position, g.origin);
    const double along = dot(offset, normal) / g.spacing[2];
    const long k = std::lround(along);
    if (k < 0 || k >= g.size[2] || std::abs(dot(offset, axis_of(g, 0))) > 0.5 * g.spacing[0] ||
        std::abs(dot(offset, axis_of(g, 1))) > 0.5 * g.spacing[1])
      throw Error(path, "frame " + std::to_string(s.frame + 1) + " at (" + decimal_string(s.position[0]) + ", " +
                            decimal_string(s.position[1]) + ", " + decimal_string(s.position[2]) +
                            ") is not on a slice of the grid " + g.describe());
    const DcmIODTypes::Frame* packed = seg->getFrame(s.frame);
    if (!packed) throw Error(path, "frame " + std::to_string(s.frame + 1) + " has no pixel data");
    std::unique_ptr<DcmIODTypes::Frame> unpacked(DcmSegUtils::unpackBinaryFrame(packed, rows, columns));
    if (!unpacked || unpacked->length < static_cast<size_t>(slice_pixels))
      throw Error(path, "cannot unpack frame " + std::to_string(s.frame + 1));
    const int value = static_cast<int>(out.segments[index_of_segment[s.segment_number]].label_value);
    int* slice = voxels.data_ptr<int>() + k * slice_pixels;
    for (long i = 0; i < slice_pixels; ++i)
      if (unpacked->pixData[i]) slice[i] = value;
    ++out.segments[index_of_segment[s.segment_number]].frames;
  }
  out.labels.voxels = voxels;
  out.labels.geometry = g;
  out.labels.source = path;
  return out;
}

}  // namespace iris::io
