// DICOM voxel values against pydicom, an independent reader: iris reads
// plain monochrome series with DCMTK and leaves compressed ones to GDCM, and
// both must give what pydicom decodes (pixel_array x RescaleSlope +
// RescaleIntercept, slices along the normal).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>

#include "support/float_file.h"
#include "support/test_support.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

using iris::testing::kObliqueMr;
using iris::testing::kPython;
const std::string kCtSeries = "/usr/lib/python3/dist-packages/pydicom/data/test_files/dicomdirtests/77654033/CT2";

// pydicom's volume of the series in `folder`: [slices, rows, columns] float32.
at::Tensor pydicom_volume(const std::string& folder, const fs::path& work) {
  const fs::path script = work / "volume.py";
  std::ofstream(script) << "import sys, glob, numpy as np, pydicom\n"
                           "slices = [pydicom.dcmread(f) for f in sorted(glob.glob(sys.argv[1] + '/*'))]\n"
                           "o = np.array(slices[0].ImageOrientationPatient, float)\n"
                           "n = np.cross(o[:3], o[3:])\n"
                           "slices.sort(key=lambda d: float(np.dot(n, np.array(d.ImagePositionPatient, float))))\n"
                           "v = np.stack([d.pixel_array.astype(np.float64) * float(getattr(d, 'RescaleSlope', 1))\n"
                           "              + float(getattr(d, 'RescaleIntercept', 0)) for d in slices])\n"
                           "v.astype('<f4').tofile(sys.argv[2])\n"
                           "print(*v.shape)\n";
  const auto run = iris::testing::run_program(
      kPython, iris::testing::shell_quoted(script.string()) + " " + iris::testing::shell_quoted(folder) + " " +
                   iris::testing::shell_quoted((work / "volume.f32").string()),
      (work / "volume.log").string());
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::istringstream shape_text(run.output);
  std::vector<int64_t> shape(3);
  shape_text >> shape[0] >> shape[1] >> shape[2];
  return iris_test::read_float32_file((work / "volume.f32").string(), shape);
}

}  // namespace

// Unsigned 16-bit MR (rescale 1/0) and signed 16-bit CT (intercept -1024;
// four slices far apart, not a volume a model would take, hence the
// tolerance).
TEST(DicomPixels, PlainSeriesGiveWhatPydicomDecodes) {
  REQUIRE_DATA(kObliqueMr);
  REQUIRE_DATA(kCtSeries);
  const fs::path work = iris::testing::temp_folder("dicom_pixels_plain");
  iris::io::DicomReadOptions any_spacing;
  any_spacing.spacing_error_fraction = 1e9;
  any_spacing.spacing_warn_fraction = 1e9;
  for (const std::string& series : {kObliqueMr, kCtSeries}) {
    const at::Tensor expected = pydicom_volume(series, work);
    const iris::io::Image image = iris::io::read_dicom_series(series, "", any_spacing);
    ASSERT_EQ(image.voxels.sizes(), expected.sizes()) << series;
    EXPECT_TRUE(at::equal(image.voxels, expected))
        << series << ": largest difference " << (image.voxels - expected).abs().max().item<float>();
  }
  EXPECT_LT(iris::io::read_dicom_series(kCtSeries, "", any_spacing).voxels.min().item<float>(), 0.0f);  // intercept
}

// A series in a compressed transfer syntax (RLE Lossless, encoded by
// pydicom) is decoded by GDCM to the same voxels and grid.
TEST(DicomPixels, ACompressedSeriesGivesTheSameVolumeAsItsPlainCopy) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path work = iris::testing::temp_folder("dicom_pixels_rle");
  const fs::path rle = work / "rle";
  fs::create_directories(rle);
  const fs::path script = work / "compress.py";
  std::ofstream(script) << "import sys, glob, os, pydicom\n"
                           "from pydicom.uid import RLELossless\n"
                           "for f in sorted(glob.glob(sys.argv[1] + '/*')):\n"
                           "    d = pydicom.dcmread(f)\n"
                           "    d.compress(RLELossless)\n"
                           "    d.save_as(os.path.join(sys.argv[2], os.path.basename(f)))\n";
  const auto run = iris::testing::run_program(kPython,
                                              iris::testing::shell_quoted(script.string()) + " " +
                                                  iris::testing::shell_quoted(kObliqueMr) + " " +
                                                  iris::testing::shell_quoted(rle.string()),
                                              (work / "compress.log").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const iris::io::Image plain = iris::io::read_image(kObliqueMr);
  const iris::io::Image compressed = iris::io::read_image(rle.string());
  EXPECT_TRUE(at::equal(plain.voxels, compressed.voxels));
  EXPECT_TRUE(plain.geometry.same_grid(compressed.geometry, 1e-12));
}
