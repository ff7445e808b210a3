#include "iris/io/dicom.h"

#include <sstream>

#include "iris/common/error.h"

namespace iris::io {

std::string DicomSeriesInfo::describe() const {
  std::ostringstream s;
  s << uid << " | " << (description.empty() ? "(no description)" : description) << " | "
    << (modality.empty() ? "?" : modality) << " | " << number_of_slices << " slice"
    << (number_of_slices == 1 ? "" : "s");
  return s.str();
}

namespace {
std::string list_for_message(const std::vector<DicomSeriesInfo>& series) {
  std::string s;
  for (const auto& info : series) s += "\n  " + info.describe();
  return s;
}
}  // namespace

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
    throw Error(folder, "has no DICOM series with UID " + uid + "; it holds:" + list_for_message(series));
  throw Error(folder, "SeriesInstanceUID " + uid + " covers several differently shaped sub-series; choose one:" +
                          list_for_message(series));
}

}  // namespace iris::io
