// Enhanced (multi-frame) DICOM: the 20-slice oblique MR series of
// tools/make_test_fixtures.py
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
#include "support/dicom_replica.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::error_of;
using iris::testing::kObliqueMr;
using iris::testing::write_enhanced;

TEST(DicomMultiframe, EnhancedMrReadsAsTheSingleFrameSeries) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = iris::testing::temp_folder("multiframe");
  write_enhanced(dir / "enhanced" / "volume.dcm", /*shuffle=*/true);
  const auto series = iris::io::list_dicom_series((dir / "enhanced").string());
  ASSERT_EQ(series.size(), 1u);
  EXPECT_TRUE(series[0].multiframe);
  EXPECT_EQ(series[0].number_of_slices, 20);
  EXPECT_EQ(series[0].modality, "MR");

  const iris::Image single = iris::io::read_image(kObliqueMr);
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
