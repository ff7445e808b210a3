// DICOM series on files. Expected header values of the oblique MR series are
// the ones tools/make_test_fixtures.py writes with pydicom (also read back with
// gdcmdump) and are hard-coded below; pydicom's study is a real export.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <unistd.h>

#include <torch/types.h>

#include "support/test_support.h"
#include "iris/common/error.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"

using iris::testing::error_of;

namespace fs = std::filesystem;

namespace {

using iris::testing::kObliqueMr;
const std::string kPydicomStudy =
    "/usr/lib/python3/dist-packages/pydicom/data/test_files/dicomdirtests/77654033";



}  // namespace

TEST(DicomTest, ListsTheObliqueMrSeries) {
  REQUIRE_DATA(kObliqueMr);
  const auto series = iris::io::list_dicom_series(kObliqueMr);
  ASSERT_EQ(series.size(), 1u);
  EXPECT_EQ(series[0].series_instance_uid, "1.2.826.0.1.3680043.8.498.7770001.1");
  EXPECT_EQ(series[0].description, "T1 AXIAL OBL (ICBM152)");
  EXPECT_EQ(series[0].modality, "MR");
  EXPECT_EQ(series[0].number_of_slices, 20);
  // Sorted along the normal, which here is also InstanceNumber order.
  EXPECT_EQ(fs::path(series[0].files.front()).filename(), "brain_001.dcm");
  EXPECT_EQ(fs::path(series[0].files.back()).filename(), "brain_020.dcm");
}

TEST(DicomTest, ReadsObliqueGeometryFromTheHeaders) {
  REQUIRE_DATA(kObliqueMr);
  iris::io::DicomReadOptions options;
  options.spacing_warn_fraction = 0.05;  // its ~1 % unevenness is below this
  const auto img = iris::io::read_dicom_series(kObliqueMr, "", options);
  EXPECT_TRUE(img.warnings.empty());
  EXPECT_EQ(img.voxels.sizes(), (std::vector<int64_t>{20, 256, 256}));
  const auto& g = img.geometry;
  // make_test_fixtures.py: PixelSpacing 0.859375\0.859375; ImagePositionPatient of
  // brain_001 -110.500\-78.3063\-72.7575 and of brain_020 -110.500\-96.2063\59.0425;
  // ImageOrientationPatient 1\0\0\0\0.990960\0.134158.
  EXPECT_NEAR(g.spacing[0], 0.859375, 1e-6);
  EXPECT_NEAR(g.spacing[1], 0.859375, 1e-6);
  EXPECT_NEAR(g.origin[0], -110.5, 1e-4);
  EXPECT_NEAR(g.origin[1], -78.3063, 1e-4);
  EXPECT_NEAR(g.origin[2], -72.7575, 1e-4);
  const double row[3] = {1, 0, 0}, col[3] = {0, 0.990960, 0.134158};
  const double normal[3] = {0, -0.134158, 0.990960};  // row x col
  for (int r = 0; r < 3; ++r) {
    EXPECT_NEAR(g.direction[3 * r + 0], row[r], 1e-5);
    EXPECT_NEAR(g.direction[3 * r + 1], col[r], 1e-5);
    EXPECT_NEAR(g.direction[3 * r + 2], normal[r], 1e-5);
  }
  // Mean step along the normal between the first and last slice.
  const double along = (-96.2063 + 78.3063) * normal[1] + (59.0425 + 72.7575) * normal[2];
  EXPECT_NEAR(g.spacing[2], along / 19, 1e-4);
  EXPECT_NEAR(g.spacing[2], 7.0005, 1e-3);  // not the header's SpacingBetweenSlices (2.0) or SliceThickness (5.0)
  // Rescale 1/0 and unsigned 16-bit pixels: non-negative integers.
  EXPECT_GE(img.voxels.min().item<float>(), 0.0f);
  EXPECT_GT(img.voxels.max().item<float>(), 100.0f);
  EXPECT_TRUE(torch::equal(img.voxels, img.voxels.round()));
  // read_image on the folder gives the same volume.
  EXPECT_TRUE(torch::equal(iris::io::read_image(kObliqueMr).voxels, img.voxels));
}

// The positions are rounded to 0.1 mm, so steps along the normal range from
// about 6.96 to 7.07 mm: ~1 % uneven. Tolerances decide what that means.
TEST(DicomTest, UnevenSliceSpacingWarnsOrFailsByTolerance) {
  REQUIRE_DATA(kObliqueMr);
  iris::io::DicomReadOptions warn;
  warn.spacing_warn_fraction = 0.002;
  const auto img = iris::io::read_dicom_series(kObliqueMr, "", warn);
  ASSERT_EQ(img.warnings.size(), 1u);
  EXPECT_NE(img.warnings[0].find("uneven slice spacing"), std::string::npos) << img.warnings[0];

  iris::io::DicomReadOptions strict;
  strict.spacing_error_fraction = 0.002;
  const std::string msg = error_of([&] { iris::io::read_dicom_series(kObliqueMr, "", strict); });
  EXPECT_NE(msg.find(kObliqueMr), std::string::npos) << msg;
  EXPECT_NE(msg.find("uneven slice spacing"), std::string::npos) << msg;
}

TEST(DicomTest, MultiSeriesFolderNeedsAUid) {
  REQUIRE_DATA(kPydicomStudy);
  // 77654033 holds CR1, CR2, CR3 (one CR image each) and CT2 (4 CT slices).
  const auto series = iris::io::list_dicom_series(kPydicomStudy);
  ASSERT_EQ(series.size(), 4u);
  int ct = 0, cr = 0;
  for (const auto& s : series) {
    if (s.modality == "CT") {
      ++ct;
      EXPECT_EQ(s.number_of_slices, 4);
      EXPECT_EQ(s.series_instance_uid, "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2");
    }
    if (s.modality == "CR") {
      ++cr;
      EXPECT_EQ(s.number_of_slices, 1);
    }
  }
  EXPECT_EQ(ct, 1);
  EXPECT_EQ(cr, 3);

  const std::string msg = error_of([&] { iris::io::read_image(kPydicomStudy); });
  EXPECT_NE(msg.find("holds 4 DICOM series"), std::string::npos) << msg;
  for (const auto& s : series) EXPECT_NE(msg.find(s.describe()), std::string::npos) << msg;

  // Its 4 CT slices are not one evenly spaced stack (positions jump by up to
  // ~200 mm), so the default tolerance refuses them; a loose one reads them.
  const std::string ct_uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2";
  const std::string uneven = error_of([&] { iris::io::read_dicom_series(kPydicomStudy, ct_uid); });
  EXPECT_NE(uneven.find("uneven slice spacing"), std::string::npos) << uneven;
  iris::io::DicomReadOptions loose;
  loose.spacing_error_fraction = 10;
  const auto ct_volume = iris::io::read_dicom_series(kPydicomStudy, ct_uid, loose);
  EXPECT_EQ(ct_volume.warnings.size(), 1u);
  EXPECT_EQ(ct_volume.voxels.sizes(), (std::vector<int64_t>{4, 16, 16}));
  EXPECT_NEAR(ct_volume.geometry.spacing[0], 0.488281, 1e-6);  // gdcmdump PixelSpacing
  EXPECT_NEAR(ct_volume.geometry.origin[0], -125.0, 1e-4);      // ImagePositionPatient
  EXPECT_NEAR(ct_volume.geometry.origin[1], -128.100006, 1e-4);

  const std::string unknown = error_of([&] { iris::io::read_dicom_series(kPydicomStudy, "1.2.3"); });
  EXPECT_NE(unknown.find("no DICOM series with UID 1.2.3"), std::string::npos) << unknown;
}

TEST(DicomTest, EmptyOrMissingFolderIsAClearError) {
  const fs::path empty = fs::temp_directory_path() / ("iris_dicom_empty_" + std::to_string(::getpid()));
  fs::create_directories(empty);
  const std::string msg = error_of([&] { iris::io::read_image(empty.string()); });
  fs::remove_all(empty);
  EXPECT_NE(msg.find(empty.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { iris::io::list_dicom_series("/no/such/dicom/folder"); }).find("not found"),
            std::string::npos);
}
