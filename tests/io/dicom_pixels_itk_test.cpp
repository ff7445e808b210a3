// DICOM voxel values against pydicom, an independent reader: iris reads
// plain monochrome series with DCMTK and leaves compressed ones to GDCM, and
// both must give what pydicom decodes (pixel_array x RescaleSlope +
// RescaleIntercept, slices along the normal).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "../../src/io/dicom_slices.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
#include "support/float_file.h"
#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {

using iris::testing::kObliqueMr;
using iris::testing::kPython;
const std::string kCtSeries = "/usr/lib/python3/dist-packages/pydicom/data/test_files/dicomdirtests/77654033/CT2";

// Runs `script` (Python with pydicom) with `args` in `work`, as NAME.py.
iris::testing::ProgramRun run_python(const fs::path& work, const std::string& name, const std::string& script,
                                     const std::vector<std::string>& args) {
  std::ofstream(work / (name + ".py")) << script;
  std::string line = iris::testing::shell_quoted((work / (name + ".py")).string());
  for (const auto& a : args) line += " " + iris::testing::shell_quoted(a);
  return iris::testing::run_program(kPython, line, (work / (name + ".log")).string());
}

// pydicom's volume of the series in `folder`: [slices, rows, columns] float32.
at::Tensor pydicom_volume(const std::string& folder, const fs::path& work) {
  const auto run = run_python(work, "volume",
                              "import sys, glob, numpy as np, pydicom\n"
                              "slices = [pydicom.dcmread(f) for f in sorted(glob.glob(sys.argv[1] + '/*'))]\n"
                              "o = np.array(slices[0].ImageOrientationPatient, float)\n"
                              "n = np.cross(o[:3], o[3:])\n"
                              "slices.sort(key=lambda d: float(np.dot(n, np.array(d.ImagePositionPatient, float))))\n"
                              "v = np.stack([d.pixel_array.astype(np.float64) * float(getattr(d, 'RescaleSlope', 1))\n"
                              "              + float(getattr(d, 'RescaleIntercept', 0)) for d in slices])\n"
                              "v.astype('<f4').tofile(sys.argv[2])\n"
                              "print(*v.shape)\n",
                              {folder, (work / "volume.f32").string()});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::istringstream shape_text(run.output);
  std::vector<int64_t> shape(3);
  shape_text >> shape[0] >> shape[1] >> shape[2];
  return iris_test::read_float32_file((work / "volume.f32").string(), shape);
}

}  // namespace

// Unsigned 16-bit MR (rescale 1/0) and signed 16-bit CT (intercept -1024;
// four slices far apart, not a volume a model would take, hence the
// spacing tolerances).
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

namespace {

// Copies of the oblique MR series made by pydicom in `work`: rle/ (RLE
// Lossless), tilted/ and tilted_rle/ (a row cosine 0.05 degrees off
// perpendicular, as rounded headers have it; plain and RLE), high_bits/
// (BitsStored 12 with one value above 4095).
void make_variants(const fs::path& work) {
  const auto run = run_python(work, "variants",
                              "import sys, glob, os, pydicom\n"
                              "from pydicom.uid import RLELossless\n"
                              "src, out = sys.argv[1], sys.argv[2]\n"
                              "for name in ['rle', 'tilted', 'tilted_rle', 'high_bits']:\n"
                              "    os.makedirs(os.path.join(out, name))\n"
                              "for f in sorted(glob.glob(src + '/*')):\n"
                              "    base = os.path.basename(f)\n"
                              "    d = pydicom.dcmread(f)\n"
                              "    d.compress(RLELossless)\n"
                              "    d.save_as(os.path.join(out, 'rle', base))\n"
                              "    for name, rle in [('tilted', False), ('tilted_rle', True)]:\n"
                              "        d = pydicom.dcmread(f)\n"
                              "        d.ImageOrientationPatient = [1, 0, 0.0008, 0, 0.990960, 0.134158]\n"
                              "        if rle: d.compress(RLELossless)\n"
                              "        d.save_as(os.path.join(out, name, base))\n"
                              "    d = pydicom.dcmread(f)\n"
                              "    a = d.pixel_array.copy()\n"
                              "    a[0, 0] = 5000\n"
                              "    d.PixelData = a.tobytes()\n"
                              "    d.BitsStored, d.HighBit = 12, 11\n"
                              "    d.save_as(os.path.join(out, 'high_bits', base))\n",
                              {kObliqueMr, work.string()});
  ASSERT_EQ(run.exit_code, 0) << run.output;
}

}  // namespace

// Compressed or unusual pixels go to GDCM, plain ones never; whichever
// library reads them, a series gives the same voxels on the same grid.
TEST(DicomPixels, CompressedOrUnusualPixelsGoToGdcmAndGiveTheSameVolume) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path work = iris::testing::temp_folder("dicom_pixels_variants");
  make_variants(work);
  auto read = [](const fs::path& folder, long expected_gdcm_reads) {
    const long before = iris::io::detail::gdcm_series_reads();
    iris::io::Image image = iris::io::read_image(folder.string());
    EXPECT_EQ(iris::io::detail::gdcm_series_reads() - before, expected_gdcm_reads) << folder;
    return image;
  };
  const iris::io::Image plain = read(kObliqueMr, 0);
  const iris::io::Image rle = read(work / "rle", 1);
  EXPECT_TRUE(at::equal(plain.voxels, rle.voxels));
  EXPECT_TRUE(plain.geometry.same_grid(rle.geometry, 1e-12));
  // The same grid from a header whose cosines are not quite perpendicular,
  // and the row made perpendicular to the column (as ITK makes it).
  const iris::io::Image tilted = read(work / "tilted", 0);
  const iris::io::Image tilted_rle = read(work / "tilted_rle", 1);
  EXPECT_TRUE(at::equal(tilted.voxels, tilted_rle.voxels));
  EXPECT_TRUE(tilted.geometry.same_grid(tilted_rle.geometry, 1e-12));
  const auto& d = tilted.geometry.direction;  // columns: row, column, normal cosines
  EXPECT_NEAR(d[0] * d[1] + d[3] * d[4] + d[6] * d[7], 0.0, 1e-12);
  EXPECT_GT(std::abs(d[6]), 1e-4);  // the row still leans as the header says
  // Bits above BitsStored: GDCM decides what they mean.
  read(work / "high_bits", 1);
}
