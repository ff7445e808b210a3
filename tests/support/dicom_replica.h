#pragma once
// Replicas of DICOM as scanners and challenges write it, made from the real
// 20-slice oblique MR series of tools/make_test_fixtures.py (DCMTK, in the ITK build's tests only).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/oflog/oflog.h>

#include "support/test_support.h"

namespace iris::testing {

namespace fs = std::filesystem;

// DCMTK warns on every read of files with odd elements; tests need only its errors.
inline void quiet_dcmtk_warnings() { OFLog::getLogger("dcmtk").setLogLevel(OFLogger::ERROR_LOG_LEVEL); }


struct Frame {
  std::vector<Uint16> pixels;
  OFString position, slope, intercept;
};

// The oblique MR series as one Enhanced MR file at `path`; `shuffle` mixes the
// frame order; `drop_position_of` (>= 0) removes one frame's position.
inline void write_enhanced(const fs::path& path, bool shuffle, int drop_position_of = -1,
                           const std::string& series_uid = "1.2.826.0.1.3680043.8.498.4242") {
  quiet_dcmtk_warnings();
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(kObliqueMr)) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  std::vector<Frame> frames;
  DcmFileFormat first;
  OFString rows_text, orientation, spacing, thickness, study, patient;
  Uint16 rows = 0, columns = 0;
  for (const auto& f : files) {
    DcmFileFormat ff;
    ASSERT_TRUE(ff.loadFile(f.c_str()).good()) << f;
    DcmDataset& ds = *ff.getDataset();
    Frame fr;
    const Uint16* data = nullptr;
    unsigned long count = 0;
    ASSERT_TRUE(ds.findAndGetUint16Array(DCM_PixelData, data, &count).good()) << f;
    fr.pixels.assign(data, data + count);
    ds.findAndGetOFStringArray(DCM_ImagePositionPatient, fr.position);
    if (ds.findAndGetOFString(DCM_RescaleSlope, fr.slope).bad()) fr.slope = "1";
    if (ds.findAndGetOFString(DCM_RescaleIntercept, fr.intercept).bad()) fr.intercept = "0";
    if (frames.empty()) {
      ds.findAndGetUint16(DCM_Rows, rows);
      ds.findAndGetUint16(DCM_Columns, columns);
      ds.findAndGetOFStringArray(DCM_ImageOrientationPatient, orientation);
      ds.findAndGetOFStringArray(DCM_PixelSpacing, spacing);
      ds.findAndGetOFString(DCM_SliceThickness, thickness);
      ds.findAndGetOFString(DCM_StudyInstanceUID, study);
      ds.findAndGetOFString(DCM_PatientID, patient);
    }
    frames.push_back(fr);
  }
  std::vector<size_t> order(frames.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (shuffle) std::shuffle(order.begin(), order.end(), std::mt19937(4));

  DcmFileFormat out;
  DcmDataset& ds = *out.getDataset();
  char uid[100];
  ds.putAndInsertString(DCM_SOPClassUID, UID_EnhancedMRImageStorage);
  ds.putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
  ds.putAndInsertString(DCM_SeriesInstanceUID, series_uid.c_str());
  ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str());
  ds.putAndInsertString(DCM_PatientID, patient.c_str());
  ds.putAndInsertString(DCM_Modality, "MR");
  ds.putAndInsertString(DCM_SeriesDescription, "T1 AXIAL OBL (ICBM152) (enhanced)");
  ds.putAndInsertUint16(DCM_Rows, rows);
  ds.putAndInsertUint16(DCM_Columns, columns);
  ds.putAndInsertUint16(DCM_BitsAllocated, 16);
  ds.putAndInsertUint16(DCM_BitsStored, 16);
  ds.putAndInsertUint16(DCM_HighBit, 15);
  ds.putAndInsertUint16(DCM_PixelRepresentation, 0);
  ds.putAndInsertUint16(DCM_SamplesPerPixel, 1);
  ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
  ds.putAndInsertString(DCM_NumberOfFrames, std::to_string(frames.size()).c_str());
  DcmItem* shared = nullptr;
  ds.findOrCreateSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0);
  DcmItem* measures = nullptr;
  shared->findOrCreateSequenceItem(DCM_PixelMeasuresSequence, measures, 0);
  measures->putAndInsertOFStringArray(DCM_PixelSpacing, spacing);
  measures->putAndInsertOFStringArray(DCM_SliceThickness, thickness);
  DcmItem* plane = nullptr;
  shared->findOrCreateSequenceItem(DCM_PlaneOrientationSequence, plane, 0);
  plane->putAndInsertOFStringArray(DCM_ImageOrientationPatient, orientation);
  std::vector<Uint16> all;
  for (size_t k = 0; k < order.size(); ++k) {
    const Frame& fr = frames[order[k]];
    DcmItem* groups = nullptr;
    ds.findOrCreateSequenceItem(DCM_PerFrameFunctionalGroupsSequence, groups, static_cast<long>(k));
    DcmItem* position = nullptr;
    if (static_cast<int>(k) != drop_position_of) {
      groups->findOrCreateSequenceItem(DCM_PlanePositionSequence, position, 0);
      position->putAndInsertOFStringArray(DCM_ImagePositionPatient, fr.position);
    }
    DcmItem* transform = nullptr;
    groups->findOrCreateSequenceItem(DCM_PixelValueTransformationSequence, transform, 0);
    transform->putAndInsertOFStringArray(DCM_RescaleSlope, fr.slope);
    transform->putAndInsertOFStringArray(DCM_RescaleIntercept, fr.intercept);
    all.insert(all.end(), fr.pixels.begin(), fr.pixels.end());
  }
  ds.putAndInsertUint16Array(DCM_PixelData, all.data(), all.size());
  fs::create_directories(path.parent_path());
  ASSERT_TRUE(out.saveFile(path.c_str(), EXS_LittleEndianExplicit).good());
}


// The oblique MR series copied into `folder` with each file named
// <SOPInstanceUID>.dcm (the challenge's layout); with `modality` set, a new
// SeriesInstanceUID `series_uid` and new SOP instance UIDs, and that Modality.
// Returns the SOP instance UIDs in file order.
inline std::vector<std::string> copy_oblique_series(const fs::path& folder, const std::string& modality = "",
                                                   const std::string& series_uid = "") {
  quiet_dcmtk_warnings();
  std::vector<std::string> files, sops;
  for (const auto& e : fs::directory_iterator(kObliqueMr)) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  fs::create_directories(folder);
  for (const auto& f : files) {
    DcmFileFormat ff;
    EXPECT_TRUE(ff.loadFile(f.c_str()).good()) << f;
    DcmDataset& ds = *ff.getDataset();
    if (!modality.empty()) {
      char uid[100];
      ds.putAndInsertString(DCM_Modality, modality.c_str());
      ds.putAndInsertString(DCM_SeriesInstanceUID, series_uid.c_str());
      ds.putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
      ff.getMetaInfo()->putAndInsertString(DCM_MediaStorageSOPInstanceUID, uid);
    }
    OFString sop;
    ds.findAndGetOFString(DCM_SOPInstanceUID, sop);
    sops.push_back(sop.c_str());
    EXPECT_TRUE(ff.saveFile((folder / (std::string(sop.c_str()) + ".dcm")).c_str(), EXS_LittleEndianExplicit).good());
  }
  return sops;
}

// The SeriesInstanceUID (or another text element) of a DICOM file.
inline std::string dicom_text(const fs::path& file, const DcmTagKey& tag) {
  DcmFileFormat ff;
  if (ff.loadFile(file.c_str()).bad()) return "";
  OFString value;
  ff.getDataset()->findAndGetOFStringArray(tag, value);
  return value.c_str();
}

}  // namespace iris::testing
