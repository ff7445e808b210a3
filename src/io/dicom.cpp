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
#include "dicom_slices.h"
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

const DicomSeriesInfo& choose_dicom_series(const std::vector<DicomSeriesInfo>& series, const std::string& folder,
                                           const std::string& uid) {
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

Image read_dicom_series(const std::string& folder, const std::string& series_uid,
                        const DicomReadOptions& options) {
  const auto series = list_dicom_series(folder, options.recursive);
  const DicomSeriesInfo& chosen = choose_dicom_series(series, folder, series_uid);
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
  const detail::SliceStack stack = detail::slice_stack(positions, orientation, source, "series " + chosen.uid);
  const double relative = stack.max_deviation / stack.mean_step;
  std::ostringstream note;
  note << "series " << chosen.uid << " has uneven slice spacing: mean " << stack.mean_step
       << " mm, largest deviation " << stack.max_deviation << " mm (" << 100 * relative << " %)";
  if (relative > options.spacing_error_fraction)
    throw Error(source, note.str() + "; missing slices? refusing to build a volume");

  Image out = detail::image_from_itk<float>(volume, source);
  // ITK takes the 3rd axis from first-to-last position; the slice normal is
  // exact and keeps the direction orthonormal when positions are rounded.
  for (int r = 0; r < 3; ++r) out.geometry.direction[3 * r + 2] = stack.normal[r];
  out.geometry.spacing[2] = stack.mean_step;
  out.geometry.origin = positions.front();
  if (relative > options.spacing_warn_fraction) out.warnings.push_back(note.str());
  detail::check_geometry(out.geometry, source);
  detail::check_finite(out.voxels, source);
  return out;
}

}  // namespace iris::io
