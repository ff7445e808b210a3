#include "iris/io/dicom.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <itkGDCMImageIO.h>
#include <itkGDCMSeriesFileNames.h>
#include <itkImageSeriesReader.h>
#include <itkMetaDataObject.h>

#include "iris/common/error.h"
#include "itk_bridge.h"

namespace fs = std::filesystem;

namespace iris::io {

std::string DicomSeriesInfo::describe() const {
  std::ostringstream s;
  s << uid << " | " << (description.empty() ? "(no description)" : description) << " | "
    << (modality.empty() ? "?" : modality) << " | " << number_of_slices << " slice"
    << (number_of_slices == 1 ? "" : "s");
  return s.str();
}

namespace {

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  size_t start = 0;
  while (start < s.size() && s[start] == ' ') ++start;
  return s.substr(start);
}

std::string tag_value(const itk::MetaDataDictionary& dict, const std::string& key) {
  std::string value;
  itk::ExposeMetaData<std::string>(dict, key, value);
  return trimmed(value);
}

// "a\b\c" -> {a, b, c}; empty when the tag is missing or malformed.
std::vector<double> decimal_values(const std::string& text) {
  std::vector<double> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, '\\')) {
    try {
      values.push_back(std::stod(item));
    } catch (const std::exception&) {
      return {};
    }
  }
  return values;
}

std::string list_for_message(const std::vector<DicomSeriesInfo>& series) {
  std::string s;
  for (const auto& info : series) s += "\n  " + info.describe();
  return s;
}

}  // namespace

std::vector<DicomSeriesInfo> list_dicom_series(const std::string& folder, bool recursive) {
  if (!fs::exists(folder)) throw Error(folder, "folder not found");
  if (!fs::is_directory(folder)) throw Error(folder, "is not a folder of DICOM files");
  if (fs::is_empty(folder)) throw Error(folder, "folder is empty; no DICOM series to read");

  std::vector<DicomSeriesInfo> result;
  try {
    auto names = itk::GDCMSeriesFileNames::New();
    // Series details split one SeriesInstanceUID further by series number
    // and image size, so that a volume never mixes differently shaped slices.
    names->SetUseSeriesDetails(true);
    names->SetRecursive(recursive);
    names->SetDirectory(folder);
    for (const std::string& uid : names->GetSeriesUIDs()) {
      DicomSeriesInfo info;
      info.uid = uid;
      info.files = names->GetFileNames(uid);
      info.number_of_slices = static_cast<int>(info.files.size());
      if (!info.files.empty()) {
        auto io = itk::GDCMImageIO::New();
        io->SetFileName(info.files.front());
        io->ReadImageInformation();
        const auto& dict = io->GetMetaDataDictionary();
        info.series_instance_uid = tag_value(dict, "0020|000e");
        info.description = tag_value(dict, "0008|103e");
        info.modality = tag_value(dict, "0008|0060");
      }
      result.push_back(std::move(info));
    }
  } catch (const itk::ExceptionObject& e) {
    throw Error(folder, "cannot list its DICOM series: " + detail::short_reason(e));
  }
  if (result.empty()) throw Error(folder, "holds no DICOM image series");
  return result;
}

namespace {

const DicomSeriesInfo& choose_series(const std::vector<DicomSeriesInfo>& series,
                                     const std::string& folder, const std::string& uid) {
  if (uid.empty()) {
    if (series.size() == 1) return series.front();
    throw Error(folder, "holds " + std::to_string(series.size()) +
                            " DICOM series; choose one by UID (uid | description | modality |"
                            " slices):" +
                            list_for_message(series));
  }
  for (const auto& info : series)
    if (info.uid == uid) return info;
  std::vector<const DicomSeriesInfo*> same_instance_uid;
  for (const auto& info : series)
    if (info.series_instance_uid == uid) same_instance_uid.push_back(&info);
  if (same_instance_uid.size() == 1) return *same_instance_uid.front();
  if (same_instance_uid.empty())
    throw Error(folder, "has no DICOM series with UID " + uid + "; it holds:" +
                            list_for_message(series));
  throw Error(folder, "SeriesInstanceUID " + uid +
                          " covers several differently shaped sub-series; choose one:" +
                          list_for_message(series));
}

struct SliceSpacing {
  double mean = 0;           // mm between neighbouring slices along the normal
  double max_deviation = 0;  // mm, largest |step - mean|
};

// Positions of the slices (sorted) projected on the slice normal.
SliceSpacing measure_slice_spacing(const std::vector<std::array<double, 3>>& positions,
                                   const std::array<double, 3>& normal) {
  std::vector<double> along;
  for (const auto& p : positions) along.push_back(p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2]);
  SliceSpacing s;
  const size_t n = along.size();
  s.mean = (along.back() - along.front()) / static_cast<double>(n - 1);
  for (size_t i = 1; i < n; ++i)
    s.max_deviation = std::max(s.max_deviation, std::abs((along[i] - along[i - 1]) - s.mean));
  return s;
}

}  // namespace

Image read_dicom_series(const std::string& folder, const std::string& series_uid,
                        const DicomReadOptions& options) {
  const auto series = list_dicom_series(folder, options.recursive);
  const DicomSeriesInfo& chosen = choose_series(series, folder, series_uid);
  const std::string source = folder;
  if (chosen.number_of_slices < 2)
    throw Error(source, "series " + chosen.uid + " has a single slice (2-D); a 3-D image is needed");

  using Volume = itk::Image<float, 3>;
  auto reader = itk::ImageSeriesReader<Volume>::New();
  auto io = itk::GDCMImageIO::New();
  reader->SetImageIO(io);
  reader->SetFileNames(chosen.files);
  // We measure spacing ourselves below (with tolerances the caller sets);
  // silence ITK's own stderr warning about it.
  reader->SetSpacingWarningRelThreshold(1e9);
  try {
    reader->Update();
  } catch (const itk::ExceptionObject& e) {
    throw Error(source, "cannot read DICOM series " + chosen.uid + ": " + detail::short_reason(e));
  }
  Volume::Pointer volume = reader->GetOutput();
  volume->DisconnectPipeline();

  // Slice positions and orientation from every file's header.
  const auto& dictionaries = *reader->GetMetaDataDictionaryArray();
  std::vector<std::array<double, 3>> positions;
  std::vector<double> orientation;
  for (const auto* dict : dictionaries) {
    const auto ipp = decimal_values(tag_value(*dict, "0020|0032"));
    if (ipp.size() != 3) throw Error(source, "a slice of series " + chosen.uid + " has no ImagePositionPatient");
    positions.push_back({ipp[0], ipp[1], ipp[2]});
    if (orientation.empty()) orientation = decimal_values(tag_value(*dict, "0020|0037"));
  }
  if (orientation.size() != 6)
    throw Error(source, "series " + chosen.uid + " has no valid ImageOrientationPatient");

  const std::array<double, 3> row{orientation[0], orientation[1], orientation[2]};
  const std::array<double, 3> col{orientation[3], orientation[4], orientation[5]};
  std::array<double, 3> normal{row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
                               row[0] * col[1] - row[1] * col[0]};
  const double normal_length = std::sqrt(normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2]);
  if (!(normal_length > 0.5))
    throw Error(source, "series " + chosen.uid + " has an invalid ImageOrientationPatient");
  for (double& c : normal) c /= normal_length;
  // Files are sorted along the normal already; orient the normal so slice
  // index grows with it.
  const std::array<double, 3> first_to_last{positions.back()[0] - positions.front()[0],
                                            positions.back()[1] - positions.front()[1],
                                            positions.back()[2] - positions.front()[2]};
  if (first_to_last[0] * normal[0] + first_to_last[1] * normal[1] + first_to_last[2] * normal[2] < 0)
    for (double& c : normal) c = -c;

  const SliceSpacing spacing = measure_slice_spacing(positions, normal);
  if (!(spacing.mean > 0))
    throw Error(source, "series " + chosen.uid + " has its slices at one position (duplicates?)");
  const double relative = spacing.max_deviation / spacing.mean;
  std::ostringstream note;
  note << "series " << chosen.uid << " has uneven slice spacing: mean " << spacing.mean
       << " mm, largest deviation " << spacing.max_deviation << " mm (" << 100 * relative << " %)";
  if (relative > options.spacing_error_fraction)
    throw Error(source, note.str() + "; missing slices? refusing to build a volume");

  Image out = detail::image_from_itk<float>(volume, source);
  // ITK takes the 3rd axis from first-to-last position; the slice normal is
  // exact and keeps the direction orthonormal when positions are rounded.
  for (int r = 0; r < 3; ++r) out.geometry.direction[3 * r + 2] = normal[r];
  out.geometry.spacing[2] = spacing.mean;
  out.geometry.origin = positions.front();
  if (relative > options.spacing_warn_fraction) out.warnings.push_back(note.str());
  detail::check_geometry(out.geometry, source);
  detail::check_finite(out.voxels, source);
  return out;
}

}  // namespace iris::io
