#include "iris/io/dicom.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>

#include <ATen/ATen.h>

#include <dcmtk/config/osconfig.h>  // DCMTK wants its configuration first
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcobject.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/oflog/oflog.h>
#include <itkGDCMImageIO.h>
#include <itkImageSeriesReader.h>

#include "iris/common/error.h"
#include "dicom_slices.h"
#include "image_checks.h"
#include "itk_bridge.h"
#include "toolkit_messages.h"

namespace fs = std::filesystem;

namespace iris::io {

namespace {

std::string describe_numbers(const std::vector<double>& v) {
  std::ostringstream s;
  for (size_t i = 0; i < v.size(); ++i) s << (i ? "\\" : "") << v[i];
  return s.str();
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void quiet_dcmtk() {
  static const bool once = [] {
    OFLog::getLogger("dcmtk").setLogLevel(OFLogger::FATAL_LOG_LEVEL);
    // Elements stored with VR UN (some converters do that) are read with the
    // VR the data dictionary gives them, so their values are text again.
    dcmEnableUnknownVRConversion.set(OFTrue);
    // Nothing iris reads comes after the pixels; a file with bytes of
    // padding or garbage there (2.5 MB in one real series) would otherwise be
    // parsed element by element, for nothing.
    dcmStopParsingAfterElement.set(DCM_PixelData);
    return true;
  }();
  (void)once;
}

std::string text_of(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFStringArray(tag, value).bad()) return "";
  std::string s(value.c_str());
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

std::vector<double> numbers_of(DcmItem& item, const DcmTagKey& tag, unsigned long count) {
  std::vector<double> values;
  for (unsigned long i = 0; i < count; ++i) {
    Float64 v = 0;
    if (item.findAndGetFloat64(tag, v, i).bad() || !std::isfinite(v)) return {};
    values.push_back(v);
  }
  return values;
}

// What the scan learnt of one image slice.
struct Slice {
  std::string file;
  std::string series_uid, description, modality;
  long rows = 0, columns = 0;
  std::vector<double> position, orientation, pixel_spacing;
  long instance_number = 0;
  long frames = 1;     // > 1: an enhanced multi-frame file (the whole volume)
  std::string damage;  // "" when the slice reads cleanly
};

// Reads one file's header and checks its pixel data; nullopt-like: `skip`
// set when it is not an image slice of a series.
Slice scan_file(const std::string& file, std::string& skip) {
  Slice s;
  s.file = file;
  DcmFileFormat ff;
  const OFCondition loaded = ff.loadFile(file.c_str());
  DcmDataset& ds = *ff.getDataset();
  s.series_uid = text_of(ds, DCM_SeriesInstanceUID);
  if (loaded.bad()) {
    // A file cut short still yields the elements before the cut: when they
    // name a series, the series has a damaged slice; otherwise it is no DICOM.
    if (s.series_uid.empty() || text_of(ds, DCM_Rows).empty()) {
      skip = std::string("not readable as DICOM (") + loaded.text() + ")";
      return s;
    }
    s.damage = std::string("cannot be read to its end (") + loaded.text() + "; cut short?)";
  }
  const std::string media_class = text_of(*ff.getMetaInfo(), DCM_MediaStorageSOPClassUID);
  const std::string sop_class = text_of(ds, DCM_SOPClassUID);
  if (media_class == UID_MediaStorageDirectoryStorage) {
    skip = "a DICOMDIR (an index of other files, not an image)";
    return s;
  }
  if (sop_class == UID_RTDoseStorage) {
    skip = "an RT Dose grid, not an image series";
    return s;
  }
  if (!ds.tagExists(DCM_PixelData)) {
    const char* name = dcmFindNameOfUID(sop_class.c_str());
    skip = std::string("holds no image (") + (name ? name : sop_class.empty() ? "no SOP class" : sop_class.c_str()) + ")";
    return s;
  }
  Uint16 rows = 0, columns = 0, samples = 1, bits = 0;
  ds.findAndGetUint16(DCM_Rows, rows);
  ds.findAndGetUint16(DCM_Columns, columns);
  ds.findAndGetUint16(DCM_SamplesPerPixel, samples);
  ds.findAndGetUint16(DCM_BitsAllocated, bits);
  Sint32 frames = 1;
  if (ds.findAndGetSint32(DCM_NumberOfFrames, frames).bad()) frames = 1;
  if (frames > 1 && !ds.tagExists(DCM_PerFrameFunctionalGroupsSequence)) {
    skip = "a multi-frame image (" + std::to_string(frames) +
           " frames) without per-frame functional groups, so without slice positions";
    return s;
  }
  s.frames = std::max<Sint32>(1, frames);
  if (samples != 1) {
    skip = "a colour image (" + std::to_string(samples) + " samples per pixel)";
    return s;
  }
  if (rows == 0 || columns == 0 || (bits != 8 && bits != 16 && bits != 32)) {
    skip = "an image without usable Rows, Columns or BitsAllocated";
    return s;
  }
  s.rows = rows;
  s.columns = columns;
  s.description = text_of(ds, DCM_SeriesDescription);
  s.modality = text_of(ds, DCM_Modality);
  s.position = numbers_of(ds, DCM_ImagePositionPatient, 3);
  s.orientation = numbers_of(ds, DCM_ImageOrientationPatient, 6);
  s.pixel_spacing = numbers_of(ds, DCM_PixelSpacing, 2);
  Sint32 number = 0;
  if (ds.findAndGetSint32(DCM_InstanceNumber, number).good()) s.instance_number = number;
  if (s.series_uid.empty()) {
    skip = "an image without a SeriesInstanceUID";
    return s;
  }
  if (!s.damage.empty()) return s;
  // The pixel data must be all there: DCMTK reads it lazily, so load it now
  // (a cut file fails here) and compare its length with what the header needs.
  DcmElement* pixels = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, pixels).bad() || !pixels) {
    s.damage = "its pixel data cannot be found";
    return s;
  }
  const OFCondition all = pixels->loadAllDataIntoMemory();
  if (all.bad()) {
    s.damage = std::string("its pixel data cannot be read (") + all.text() + "; cut short?)";
    return s;
  }
  const DcmXfer xfer(ds.getOriginalXfer());
  if (!xfer.isEncapsulated()) {
    const unsigned long needed = static_cast<unsigned long>(rows) * columns * (bits / 8) * static_cast<unsigned long>(s.frames);
    const unsigned long have = pixels->getLength();
    if (have < needed)
      s.damage = "its pixel data holds " + std::to_string(have) + " bytes but " + std::to_string(s.frames) + " frame(s) of " +
                 std::to_string(rows) + "x" + std::to_string(columns) + " pixels of " + std::to_string(bits) +
                 " bits need " + std::to_string(needed);
  }
  return s;
}

std::string describe_orientation(const std::vector<double>& o) {
  std::ostringstream m;
  for (size_t i = 0; i < o.size(); ++i) m << (i ? "\\" : "") << o[i];
  return m.str();
}


// The item of `sequence` inside `groups` (a functional-groups item), or null.
DcmItem* group_item(DcmItem* groups, const DcmTagKey& sequence) {
  DcmItem* item = nullptr;
  if (groups && groups->findAndGetSequenceItem(sequence, item, 0).good()) return item;
  return nullptr;
}

// A value of an enhanced file: the frame's own functional group, else the
// shared one, else (for the legacy elements) the top-level dataset.
std::vector<double> functional_value(DcmItem* frame, DcmItem* shared, DcmItem* top, const DcmTagKey& sequence,
                                     const DcmTagKey& tag, unsigned long count) {
  for (DcmItem* groups : {frame, shared}) {
    if (DcmItem* item = group_item(groups, sequence)) {
      auto v = numbers_of(*item, tag, count);
      if (!v.empty()) return v;
    }
  }
  return top ? numbers_of(*top, tag, count) : std::vector<double>{};
}

// ImageOrientationPatient's row and column cosines as ITK's GDCMImageIO
// makes them (headers round them to 6 digits or so): the column scaled to
// unit length, the row made exactly perpendicular to it, in the plane of the
// two (row = unit(column x unit(row x column))).
std::array<double, 6> unit_cosines(const std::vector<double>& o) {
  auto cross = [](const std::array<double, 3>& a, const std::array<double, 3>& b) {
    return std::array<double, 3>{a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
  };
  auto unit = [](std::array<double, 3> a) {
    const double norm = std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
    for (double& v : a) v /= norm;
    return a;
  };
  const std::array<double, 3> row{o[0], o[1], o[2]}, column{o[3], o[4], o[5]};
  const auto slice = unit(cross(row, column));
  const auto r = unit(cross(column, slice));
  const auto c = unit(column);
  return {r[0], r[1], r[2], c[0], c[1], c[2]};
}

// The pixel words of `pixels` as numbers of `type` in `shape`, signed where
// `representation` is 1; undefined when DCMTK cannot give them, when they
// are not 8 or 16 bits, or when there are fewer than `shape` holds.
at::Tensor pixel_values(DcmElement& pixels, Uint16 bits, Uint16 representation, const std::vector<int64_t>& shape,
                        at::ScalarType type) {
  size_t count = 1;
  for (int64_t n : shape) count *= static_cast<size_t>(n);
  if ((bits != 8 && bits != 16) || pixels.getLength() < count * (bits / 8)) return {};
  if (bits == 16) {
    Uint16* data = nullptr;
    if (pixels.getUint16Array(data).bad() || !data) return {};
    const at::Tensor words = at::from_blob(data, shape, at::kShort);
    return representation ? words.to(type) : words.to(at::kInt).bitwise_and(0xFFFF).to(type);
  }
  Uint8* data = nullptr;
  if (pixels.getUint8Array(data).bad() || !data) return {};
  return at::from_blob(data, shape, representation ? at::kChar : at::kByte).to(type);
}

// An enhanced (multi-frame) CT/MR/... file as a volume: frame positions
// from the per-frame Plane Position groups, orientation and pixel spacing
// from the Plane Orientation and Pixel Measures groups (shared or per
// frame), rescale from Pixel Value Transformation; frames sorted along the
// slice normal, the same checks and tolerances as a single-frame series.
Image read_multiframe(const DicomSeriesInfo& chosen, const std::string& source, const DicomReadOptions& options) {
  quiet_dcmtk();
  const std::string& file = chosen.files.front();
  const std::string what = "multi-frame series " + chosen.uid + " (" + fs::path(file).filename().string() + ")";
  DcmFileFormat ff;
  if (ff.loadFile(file.c_str()).bad()) throw Error(source, what + " cannot be read");
  DcmDataset& ds = *ff.getDataset();
  Uint16 rows = 0, columns = 0, bits = 0, representation = 0;
  Sint32 frames = 0;
  ds.findAndGetUint16(DCM_Rows, rows);
  ds.findAndGetUint16(DCM_Columns, columns);
  ds.findAndGetUint16(DCM_BitsAllocated, bits);
  ds.findAndGetUint16(DCM_PixelRepresentation, representation);
  ds.findAndGetSint32(DCM_NumberOfFrames, frames);
  const DcmXfer xfer(ds.getOriginalXfer());
  if (xfer.isEncapsulated())
    throw Error(source, what + " is compressed (" + std::string(xfer.getXferName()) +
                            "), which iris does not decode in multi-frame files yet; decompress it first "
                            "(dcmdjpeg or gdcmconv --raw)");
  DcmItem* shared = nullptr;
  ds.findAndGetSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0);
  std::vector<DcmItem*> per_frame;
  for (Sint32 f = 0; f < frames; ++f) {
    DcmItem* item = nullptr;
    if (ds.findAndGetSequenceItem(DCM_PerFrameFunctionalGroupsSequence, item, f).bad())
      throw Error(source, what + " has no per-frame functional group for frame " + std::to_string(f + 1));
    per_frame.push_back(item);
  }
  const auto orientation =
      functional_value(per_frame[0], shared, &ds, DCM_PlaneOrientationSequence, DCM_ImageOrientationPatient, 6);
  const auto spacing = functional_value(per_frame[0], shared, &ds, DCM_PixelMeasuresSequence, DCM_PixelSpacing, 2);
  if (orientation.size() != 6) throw Error(source, what + " has no ImageOrientationPatient");
  if (spacing.size() != 2) throw Error(source, what + " has no PixelSpacing");
  std::vector<std::array<double, 3>> positions;
  std::vector<double> slopes, intercepts;
  for (Sint32 f = 0; f < frames; ++f) {
    const auto p = functional_value(per_frame[f], nullptr, nullptr, DCM_PlanePositionSequence, DCM_ImagePositionPatient, 3);
    if (p.size() != 3) throw Error(source, what + ": frame " + std::to_string(f + 1) + " has no ImagePositionPatient");
    positions.push_back({p[0], p[1], p[2]});
    const auto o = functional_value(per_frame[f], shared, &ds, DCM_PlaneOrientationSequence, DCM_ImageOrientationPatient, 6);
    for (int i = 0; i < 6 && o.size() == 6; ++i)
      if (std::abs(o[i] - orientation[i]) > 1e-3)
        throw Error(source, what + ": frame " + std::to_string(f + 1) + " has ImageOrientationPatient " +
                                describe_orientation(o) + " but frame 1 " + describe_orientation(orientation) +
                                "; frames of different orientations do not make one volume");
    const auto slope = functional_value(per_frame[f], shared, &ds, DCM_PixelValueTransformationSequence, DCM_RescaleSlope, 1);
    const auto intercept =
        functional_value(per_frame[f], shared, &ds, DCM_PixelValueTransformationSequence, DCM_RescaleIntercept, 1);
    if (!slope.empty() && slope[0] == 0)
      throw Error(source, what + ": frame " + std::to_string(f + 1) + " has RescaleSlope 0: every voxel would be "
                                                                      "the intercept");
    slopes.push_back(slope.empty() ? 1.0 : slope[0]);
    intercepts.push_back(intercept.empty() ? 0.0 : intercept[0]);
  }
  // Pixel data: frames one after another, rows x columns each.
  DcmElement* pixels = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, pixels).bad() || !pixels) throw Error(source, what + " has no pixel data");
  const auto shape = std::vector<int64_t>{frames, rows, columns};
  if (bits != 8 && bits != 16)
    throw Error(source, what + " has " + std::to_string(bits) + "-bit pixels; iris reads 8- and 16-bit multi-frame files");
  at::Tensor raw = pixel_values(*pixels, bits, representation, shape, at::kFloat);
  if (!raw.defined())
    throw Error(source, what + ": its pixel data cannot be read, or holds fewer than " + std::to_string(frames) +
                            " frames");
  for (Sint32 f = 0; f < frames; ++f)
    if (slopes[f] != 1.0 || intercepts[f] != 0.0) raw[f].mul_(slopes[f]).add_(intercepts[f]);
  // Along the slice normal, as a single-frame series is sorted.
  const double* r = orientation.data();
  const double* c = orientation.data() + 3;
  const double n[3] = {r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]};
  std::vector<long> order(frames);
  for (long i = 0; i < frames; ++i) order[i] = i;
  auto along = [&](long i) { return n[0] * positions[i][0] + n[1] * positions[i][1] + n[2] * positions[i][2]; };
  std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return along(a) < along(b); });
  std::vector<std::array<double, 3>> sorted;
  for (long i : order) sorted.push_back(positions[i]);
  if (frames < 2) throw Error(source, what + " has a single frame (2-D); a 3-D image is needed");
  const detail::SliceStack stack = detail::slice_stack(sorted, orientation, source, what);
  const double relative = stack.max_deviation / stack.mean_step;
  std::ostringstream note;
  note << what << " has uneven slice spacing: mean " << stack.mean_step << " mm, largest deviation "
       << stack.max_deviation << " mm (" << 100 * relative << " %)";
  if (relative > options.spacing_error_fraction) throw Error(source, note.str() + "; missing frames? refusing to build a volume");
  Image out;
  out.source = source;
  out.voxels = raw.index_select(0, at::tensor(std::vector<int64_t>(order.begin(), order.end()), at::kLong)).contiguous();
  out.geometry.size = {columns, rows, frames};
  out.geometry.spacing = {spacing[1], spacing[0], stack.mean_step};
  out.geometry.origin = sorted.front();
  const auto unit = unit_cosines(orientation);
  for (int i = 0; i < 3; ++i) {
    out.geometry.direction[3 * i + 0] = unit[i];
    out.geometry.direction[3 * i + 1] = unit[3 + i];
    out.geometry.direction[3 * i + 2] = stack.normal[i];
  }
  if (relative > options.spacing_warn_fraction) out.warnings.push_back(note.str());
  detail::check_geometry(out.geometry, source);
  detail::check_finite(out.voxels, source, kNaN, nullptr);
  return out;
}
// The pixels of a single-frame series read with DCMTK, when they are plain
// monochrome samples that GDCM would give unchanged: uncompressed,
// MONOCHROME2, one sample, 8 or 16 bits, no bits above BitsStored (GDCM
// cleans those). DCMTK takes a damaged file's trailing bytes in one pass,
// where GDCM parses them element by element (seconds for 2.5 MB of padding).
// Returns an undefined tensor to leave the series to GDCM. [slices, rows,
// columns], each slice rescaled (in double, as GDCM does) by its own
// RescaleSlope/RescaleIntercept, in `files` order.
at::Tensor read_plain_slices(const std::vector<std::string>& files) {
  at::Tensor volume;
  for (size_t i = 0; i < files.size(); ++i) {
    DcmFileFormat ff;
    if (ff.loadFile(files[i].c_str()).bad()) return {};
    DcmDataset& ds = *ff.getDataset();
    if (DcmXfer(ds.getOriginalXfer()).isEncapsulated()) return {};
    Uint16 rows = 0, columns = 0, bits = 0, stored = 0, high = 0, representation = 0, samples = 1;
    if (ds.findAndGetUint16(DCM_Rows, rows).bad() || ds.findAndGetUint16(DCM_Columns, columns).bad() ||
        ds.findAndGetUint16(DCM_BitsAllocated, bits).bad() || ds.findAndGetUint16(DCM_BitsStored, stored).bad() ||
        ds.findAndGetUint16(DCM_HighBit, high).bad() || ds.findAndGetUint16(DCM_PixelRepresentation, representation).bad())
      return {};
    if (high + 1 != stored) return {};  // bits not at the bottom of their word: GDCM shifts them
    ds.findAndGetUint16(DCM_SamplesPerPixel, samples);
    if (samples != 1 || text_of(ds, DCM_PhotometricInterpretation) != "MONOCHROME2") return {};
    if ((bits != 8 && bits != 16) || stored < 1 || stored > bits || (representation != 0 && stored != bits)) return {};
    if (text_of(ds, DCM_NumberOfFrames).size() > 0 && text_of(ds, DCM_NumberOfFrames) != "1") return {};
    if (i == 0) volume = at::empty({static_cast<int64_t>(files.size()), rows, columns}, at::kFloat);
    else if (volume.size(1) != rows || volume.size(2) != columns) return {};
    DcmElement* pixels = nullptr;
    if (ds.findAndGetElement(DCM_PixelData, pixels).bad() || !pixels) return {};
    at::Tensor raw = pixel_values(*pixels, bits, representation, {rows, columns}, at::kDouble);
    if (!raw.defined()) return {};
    if (representation == 0 && stored < bits && raw.max().item<double>() >= std::ldexp(1.0, stored)) return {};
    const auto slope = numbers_of(ds, DCM_RescaleSlope, 1);
    const auto intercept = numbers_of(ds, DCM_RescaleIntercept, 1);
    if (!slope.empty() || !intercept.empty())
      raw = raw.mul(slope.empty() ? 1.0 : slope[0]).add(intercept.empty() ? 0.0 : intercept[0]);
    volume[static_cast<int64_t>(i)].copy_(raw);
  }
  return volume;
}

}  // namespace

std::vector<DicomSeriesInfo> list_dicom_series(const std::string& folder, bool recursive,
                                               std::vector<DicomSkippedFile>* skipped) {
  if (!fs::exists(folder)) throw Error(folder, "folder not found");
  if (!fs::is_directory(folder)) throw Error(folder, "is not a folder of DICOM files");
  if (fs::is_empty(folder)) throw Error(folder, "folder is empty; no DICOM series to read");
  quiet_dcmtk();
  std::vector<std::string> files;
  std::error_code ec;
  if (recursive) {
    for (auto it = fs::recursive_directory_iterator(folder, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    }
  } else {
    for (const auto& e : fs::directory_iterator(folder, ec))
      if (e.is_regular_file()) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());

  // Group by SeriesInstanceUID, then by image shape.
  std::map<std::string, std::vector<Slice>> by_uid;
  std::vector<std::string> order;
  for (const auto& file : files) {
    std::string skip;
    Slice s = scan_file(file, skip);
    if (!skip.empty()) {
      if (skipped) skipped->push_back({file, skip});
      continue;
    }
    if (!by_uid.count(s.series_uid)) order.push_back(s.series_uid);
    by_uid[s.series_uid].push_back(std::move(s));
  }
  std::vector<DicomSeriesInfo> result;
  for (const auto& uid : order) {
    auto& slices = by_uid[uid];
    // An enhanced multi-frame file is a volume of its own.
    std::vector<Slice*> multi;
    for (auto& s : slices)
      if (s.frames > 1) multi.push_back(&s);
    for (Slice* m : multi) {
      DicomSeriesInfo info;
      info.series_instance_uid = uid;
      info.uid = slices.size() == 1 ? uid : uid + "." + fs::path(m->file).filename().string();
      info.description = m->description;
      info.modality = m->modality;
      info.multiframe = true;
      info.files = {m->file};
      if (!m->damage.empty()) info.damaged.push_back({m->file, m->damage});
      info.number_of_slices = static_cast<int>(m->frames);
      result.push_back(std::move(info));
    }
    if (multi.size() == slices.size()) continue;
    std::map<std::pair<long, long>, std::vector<Slice*>> shapes;
    std::vector<const Slice*> damaged;
    for (auto& s : slices) {
      if (s.frames > 1) continue;
      if (!s.damage.empty() && s.rows == 0) damaged.push_back(&s);
      else shapes[{s.rows, s.columns}].push_back(&s);
    }
    if (shapes.empty()) {
      // Every slice of the series is damaged: still listed, so that reading it names them.
      shapes[{0, 0}] = {};
    }
    for (auto& [shape, members] : shapes) {
      DicomSeriesInfo info;
      info.series_instance_uid = uid;
      info.uid = shapes.size() > 1 ? uid + "." + std::to_string(shape.first) + "x" + std::to_string(shape.second) : uid;
      for (const Slice* d : damaged) info.damaged.push_back({d->file, d->damage});
      std::vector<Slice*> good;
      for (Slice* m : members) {
        if (!m->damage.empty()) info.damaged.push_back({m->file, m->damage});
        else good.push_back(m);
      }
      if (!members.empty()) {
        info.description = members.front()->description;
        info.modality = members.front()->modality;
      }
      // Along the slice normal of the first slice when every slice has a
      // position; else by InstanceNumber, then file name.
      const Slice* first = good.empty() ? nullptr : good.front();
      const bool placed = first && first->orientation.size() == 6 &&
                          std::all_of(good.begin(), good.end(), [](const Slice* s) { return s->position.size() == 3; });
      if (placed) {
        const auto& o = first->orientation;
        const double n[3] = {o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]};
        auto along = [&](const Slice* s) { return n[0] * s->position[0] + n[1] * s->position[1] + n[2] * s->position[2]; };
        std::stable_sort(good.begin(), good.end(), [&](const Slice* a, const Slice* b) { return along(a) < along(b); });
      } else {
        std::stable_sort(good.begin(), good.end(),
                         [](const Slice* a, const Slice* b) { return a->instance_number < b->instance_number; });
      }
      for (const Slice* g : good) info.files.push_back(g->file);
      info.number_of_slices = static_cast<int>(info.files.size() + info.damaged.size());
      result.push_back(std::move(info));
    }
    // Geometry checks need the slices again at read time: keep them in a side table.
    (void)slices;
  }
  if (result.empty()) {
    std::string why;
    if (skipped && !skipped->empty()) why = " (" + std::to_string(skipped->size()) + " file(s) skipped, e.g. " +
                                            fs::path(skipped->front().file).filename().string() + ": " +
                                            skipped->front().reason + ")";
    throw Error(folder, "holds no DICOM image series" + why);
  }
  return result;
}

Image read_dicom_series(const std::string& folder, const std::string& series_uid, const DicomReadOptions& options) {
  const auto series = list_dicom_series(folder, options.recursive);
  const DicomSeriesInfo& chosen = choose_dicom_series(series, folder, series_uid);
  const std::string source = folder;
  if (!chosen.damaged.empty()) {
    std::string list;
    for (size_t i = 0; i < chosen.damaged.size() && i < 5; ++i)
      list += "\n  " + chosen.damaged[i].first + ": " + chosen.damaged[i].second;
    if (chosen.damaged.size() > 5) list += "\n  ... and " + std::to_string(chosen.damaged.size() - 5) + " more";
    throw Error(source, "series " + chosen.uid + " has " + std::to_string(chosen.damaged.size()) +
                            " damaged slice(s); refusing to build a volume with holes:" + list);
  }
  if (chosen.multiframe) return read_multiframe(chosen, source, options);
  if (chosen.files.size() < 2)
    throw Error(source, "series " + chosen.uid + " has a single slice (2-D); a 3-D image is needed");

  // Every slice must sit on the same kind of grid: orientation and pixel
  // spacing as the first slice, and a position.
  quiet_dcmtk();
  std::vector<std::array<double, 3>> positions;
  std::vector<double> orientation, spacing;
  for (const auto& file : chosen.files) {
    DcmFileFormat header;
    if (header.loadFileUntilTag(file.c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_autoDetect, DCM_PixelData).bad())
      throw Error(source, "slice " + file + " of series " + chosen.uid + " cannot be read");
    DcmDataset& ds = *header.getDataset();
    const auto ipp = numbers_of(ds, DCM_ImagePositionPatient, 3);
    const auto iop = numbers_of(ds, DCM_ImageOrientationPatient, 6);
    const auto ps = numbers_of(ds, DCM_PixelSpacing, 2);
    if (ipp.size() != 3) throw Error(source, "slice " + file + " of series " + chosen.uid + " has no ImagePositionPatient");
    if (iop.size() != 6) throw Error(source, "slice " + file + " of series " + chosen.uid + " has no ImageOrientationPatient");
    positions.push_back({ipp[0], ipp[1], ipp[2]});
    const auto slope = numbers_of(ds, DCM_RescaleSlope, 1);
    if (!slope.empty() && slope[0] == 0)
      throw Error(source, "slice " + file + " of series " + chosen.uid + " has RescaleSlope 0: every voxel would be "
                                                                         "the intercept");
    if (orientation.empty()) {
      // Without a pixel size the volume's scale is unknown: no silent 1 mm.
      if (ps.size() != 2 || !(ps[0] > 0) || !(ps[1] > 0) || !std::isfinite(ps[0]) || !std::isfinite(ps[1]))
        throw Error(source, "slice " + file + " of series " + chosen.uid +
                                (ps.empty() ? std::string(" has no PixelSpacing (0028,0030)")
                                            : " has PixelSpacing " + describe_numbers(ps) + ", not two sizes > 0") +
                                ": its voxel size is unknown (iris does not guess 1 mm)");
      orientation = iop;
      spacing = ps;
      continue;
    }
    for (int i = 0; i < 6; ++i)
      if (std::abs(iop[i] - orientation[i]) > 1e-3)
        throw Error(source, "slice " + file + " of series " + chosen.uid + " has ImageOrientationPatient " +
                                describe_orientation(iop) + " but the others " + describe_orientation(orientation) +
                                "; slices of different orientations do not make one volume");
    if (ps.size() != spacing.size() || (ps.size() == 2 && (std::abs(ps[0] - spacing[0]) > 1e-4 * spacing[0] ||
                                                         std::abs(ps[1] - spacing[1]) > 1e-4 * spacing[1])))
      throw Error(source, "slice " + file + " of series " + chosen.uid + " has another PixelSpacing than the others");
  }
  const detail::SliceStack stack = detail::slice_stack(positions, orientation, source, "series " + chosen.uid);
  const double relative = stack.max_deviation / stack.mean_step;
  std::ostringstream note;
  note << "series " << chosen.uid << " has uneven slice spacing: mean " << stack.mean_step
       << " mm, largest deviation " << stack.max_deviation << " mm (" << 100 * relative << " %)";
  if (relative > options.spacing_error_fraction)
    throw Error(source, note.str() + "; missing slices? refusing to build a volume");

  // One grid whichever library reads the pixels: from the headers read
  // above (ITK takes the 3rd axis from first-to-last position; the slice
  // normal is exact and keeps the direction orthonormal when positions are
  // rounded).
  auto on_the_series_grid = [&](Image out) {
    const auto unit = unit_cosines(orientation);
    for (int i = 0; i < 3; ++i) {
      out.geometry.direction[3 * i + 0] = unit[i];
      out.geometry.direction[3 * i + 1] = unit[3 + i];
      out.geometry.direction[3 * i + 2] = stack.normal[i];
    }
    out.geometry.spacing = {spacing[1], spacing[0], stack.mean_step};
    out.geometry.origin = positions.front();
    if (relative > options.spacing_warn_fraction) out.warnings.push_back(note.str());
    detail::check_geometry(out.geometry, source);
    detail::check_finite(out.voxels, source, kNaN, nullptr);
    return out;
  };
  if (at::Tensor plain = read_plain_slices(chosen.files); plain.defined()) {
    Image out;
    out.source = source;
    out.voxels = plain;
    out.geometry.size = {plain.size(2), plain.size(1), plain.size(0)};
    return on_the_series_grid(std::move(out));
  }

  // Compressed or unusual pixels: GDCM, through ITK.
  using Volume = itk::Image<float, 3>;
  const detail::ToolkitMessages messages;
  auto reader = itk::ImageSeriesReader<Volume>::New();
  auto io = itk::GDCMImageIO::New();
  reader->SetImageIO(io);
  reader->SetFileNames(chosen.files);
  // We measure spacing ourselves above (with tolerances the caller sets);
  // silence ITK's own stderr warning about it.
  reader->SetSpacingWarningRelThreshold(1e9);
  try {
    reader->Update();
  } catch (const itk::ExceptionObject& e) {
    throw Error(source, "cannot read DICOM series " + chosen.uid + ": " + detail::short_reason(e));
  }
  Volume::Pointer volume = reader->GetOutput();
  volume->DisconnectPipeline();

  ++detail::gdcm_series_reads();
  Image out = on_the_series_grid(detail::image_from_itk<float>(volume, source));
  const std::string noise = messages.summary("series " + chosen.uid);
  if (!noise.empty()) out.warnings.push_back(noise);
  return out;
}

std::array<double, 3> dicom_pixel_position(const std::string& file, double column, double row, long frame) {
  quiet_dcmtk();
  DcmFileFormat ff;
  if (ff.loadFile(file.c_str()).bad()) throw Error(file, "cannot be read as DICOM");
  DcmDataset& ds = *ff.getDataset();
  Sint32 frames = 1;
  if (ds.findAndGetSint32(DCM_NumberOfFrames, frames).bad() || frames < 1) frames = 1;
  if (frame < 0 || frame >= frames)
    throw Error(file, "has " + std::to_string(frames) + " frame(s); frame " + std::to_string(frame) + " does not exist");
  DcmItem* shared = nullptr;
  ds.findAndGetSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0);
  DcmItem* own = nullptr;
  ds.findAndGetSequenceItem(DCM_PerFrameFunctionalGroupsSequence, own, frame);
  const auto position = functional_value(own, shared, &ds, DCM_PlanePositionSequence, DCM_ImagePositionPatient, 3);
  const auto orientation =
      functional_value(own, shared, &ds, DCM_PlaneOrientationSequence, DCM_ImageOrientationPatient, 6);
  const auto spacing = functional_value(own, shared, &ds, DCM_PixelMeasuresSequence, DCM_PixelSpacing, 2);
  const std::string where = frames > 1 ? "frame " + std::to_string(frame) + " " : "";
  if (position.size() != 3) throw Error(file, where + "has no ImagePositionPatient");
  if (orientation.size() != 6) throw Error(file, where + "has no ImageOrientationPatient");
  if (spacing.size() != 2) throw Error(file, where + "has no PixelSpacing");
  std::array<double, 3> p{};
  for (int a = 0; a < 3; ++a)
    p[a] = position[a] + column * spacing[1] * orientation[a] + row * spacing[0] * orientation[3 + a];
  return p;
}

std::string find_dicom_instance(const std::string& folder, const std::string& sop_instance_uid) {
  quiet_dcmtk();
  if (!fs::is_directory(folder)) throw Error(folder, "folder not found");
  auto holds = [&](const fs::path& file) {
    DcmFileFormat ff;
    if (ff.loadFile(file.c_str(), EXS_Unknown, EGL_noChange, 4096).bad()) return false;
    return text_of(*ff.getDataset(), DCM_SOPInstanceUID) == sop_instance_uid;
  };
  const fs::path named = fs::path(folder) / (sop_instance_uid + ".dcm");
  if (fs::is_regular_file(named) && holds(named)) return named.string();
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(folder, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it)
    if (it->is_regular_file()) files.push_back(it->path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files)
    if (holds(f)) return f.string();
  throw Error(folder, "no DICOM file holds SOP instance " + sop_instance_uid);
}

}  // namespace iris::io
