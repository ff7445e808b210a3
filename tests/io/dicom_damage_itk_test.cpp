// DICOM folders as they come from a PACS or a challenge: damaged slices are
// errors naming the slice, slices of another orientation are not stacked, and
// objects that are no image slices (RT Dose, DICOMDIR, reports) are skipped
// with a reason instead of taking the process down.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::error_of;
using iris::testing::temp_folder;

namespace {
using iris::testing::kObliqueMr;
const std::string kPydicom = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";

fs::path copy_of_series(const std::string& name) {
  const fs::path dir = temp_folder(name);
  for (const auto& e : fs::directory_iterator(kObliqueMr)) fs::copy_file(e.path(), dir / e.path().filename());
  return dir;
}

// Edits one slice with DCMTK (the test's own tool, not iris' reader).
template <typename Edit>
void edit_slice(const fs::path& file, Edit&& edit) {
  DcmFileFormat ff;
  ASSERT_TRUE(ff.loadFile(file.c_str()).good());
  ASSERT_TRUE(ff.loadAllDataIntoMemory().good());
  edit(*ff.getDataset());
  ASSERT_TRUE(ff.saveFile(file.c_str(), ff.getDataset()->getOriginalXfer()).good());
}
// Everything written to this process's stderr (file descriptor 2) while
// `run` runs.
std::string stderr_of(const std::function<void()>& run, const fs::path& capture) {
  std::cerr.flush();
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int file = ::open(capture.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ::dup2(file, 2);
  ::close(file);
  try {
    run();
  } catch (...) {
    std::cerr.flush();
    ::dup2(saved, 2);
    ::close(saved);
    throw;
  }
  std::cerr.flush();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::ifstream in(capture, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
}  // namespace

// A slice with megabytes of trailing padding (a real series from a PACS had
// 2.5 MB): GDCM used to print every element it could not parse, 3.1 million
// lines on stderr whatever --quiet said. The series reads as without the
// padding, and the toolkits print nothing.
TEST(DicomDamage, TrailingPaddingReadsQuietlyAndGivesTheSameVolume) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = copy_of_series("dicom_padding");
  {
    std::ofstream padded(dir / "brain_005.dcm", std::ios::binary | std::ios::app);
    const std::string zeros(2'500'000, '\0');
    padded.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  iris::io::Image image;
  const std::string printed =
      stderr_of([&] { image = iris::io::read_image(dir.string()); }, dir.parent_path() / "dicom_padding.stderr");
  EXPECT_LT(printed.size(), 200u) << printed.substr(0, 2000);
  const iris::io::Image clean = iris::io::read_image(kObliqueMr);
  EXPECT_TRUE(image.geometry.same_grid(clean.geometry));
  EXPECT_TRUE(at::equal(image.voxels, clean.voxels));
  for (const auto& w : image.warnings) EXPECT_EQ(w.find("toolkit"), std::string::npos) << w;
  fs::remove_all(dir);
  fs::remove(dir.parent_path() / "dicom_padding.stderr");
}

TEST(DicomDamage, PixelDataShorterThanTheHeaderSaysIsAnErrorNamingTheSlice) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = copy_of_series("dicom_short_pixels");
  edit_slice(dir / "brain_007.dcm", [](DcmDataset& ds) {
    const Uint16* pixels = nullptr;
    unsigned long count = 0;
    ASSERT_TRUE(ds.findAndGetUint16Array(DCM_PixelData, pixels, &count).good());
    std::vector<Uint16> half(pixels, pixels + count / 2);
    ASSERT_TRUE(ds.putAndInsertUint16Array(DCM_PixelData, half.data(), half.size()).good());
  });
  const std::string msg = error_of([&] { iris::io::read_image(dir.string()); });
  EXPECT_NE(msg.find("1 damaged slice(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("brain_007.dcm: its pixel data holds"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(DicomDamage, ASliceFileCutInHalfIsAnErrorNamingIt) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = copy_of_series("dicom_cut_slice");
  fs::resize_file(dir / "brain_012.dcm", fs::file_size(dir / "brain_012.dcm") / 2);
  const std::string msg = error_of([&] { iris::io::read_image(dir.string()); });
  EXPECT_NE(msg.find("brain_012.dcm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("damaged"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(DicomDamage, ASliceOfAnotherOrientationIsNotStacked) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = copy_of_series("dicom_orientation");
  edit_slice(dir / "brain_010.dcm", [](DcmDataset& ds) {
    ASSERT_TRUE(ds.putAndInsertString(DCM_ImageOrientationPatient, "0\\1\\0\\0\\0\\-1").good());
  });
  const std::string msg = error_of([&] { iris::io::read_image(dir.string()); });
  EXPECT_NE(msg.find("brain_010.dcm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has ImageOrientationPatient 0\\1\\0\\0\\0\\-1"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(DicomDamage, ObjectsThatAreNoImageSlicesAreSkippedWithAReason) {
  REQUIRE_DATA(kObliqueMr);
  REQUIRE_DATA(kPydicom + "rtdose_1frame.dcm");
  const fs::path dir = copy_of_series("dicom_study");
  // What sits in real study folders next to the images: RT Dose grids (GDCM
  // aborted on these), a DICOMDIR without offsets, a structure set, a report,
  // a multi-frame image and a text file.
  const fs::path extra = dir / "extra";
  fs::create_directories(extra);
  for (const std::string f : {"rtdose_1frame.dcm", "rtdose_rle_1frame.dcm", "rtdose.dcm", "rtstruct.dcm", "test-SR.dcm",
                              "SC_rgb_rle_2frame.dcm", "dicomdirtests/DICOMDIR-nooffset"}) {
    REQUIRE_DATA(kPydicom + f);
    fs::copy_file(kPydicom + f, extra / fs::path(f).filename());
  }
  std::ofstream(extra / "README.txt") << "exported by a PACS";
  std::vector<iris::io::DicomSkippedFile> skipped;
  const auto series = iris::io::list_dicom_series(dir.string(), true, &skipped);
  std::string listed;
  for (const auto& s : series) listed += "\n  " + s.describe() + " (" + s.files.front() + ")";
  ASSERT_EQ(series.size(), 1u) << listed;
  EXPECT_EQ(series[0].number_of_slices, 20);
  auto reason_of = [&](const std::string& name) {
    for (const auto& s : skipped)
      if (fs::path(s.file).filename() == name) return s.reason;
    return std::string("(not skipped)");
  };
  EXPECT_NE(reason_of("rtdose_1frame.dcm").find("RT Dose"), std::string::npos) << reason_of("rtdose_1frame.dcm");
  EXPECT_NE(reason_of("rtdose_rle_1frame.dcm").find("RT Dose"), std::string::npos);
  EXPECT_NE(reason_of("DICOMDIR-nooffset").find("DICOMDIR"), std::string::npos) << reason_of("DICOMDIR-nooffset");
  EXPECT_NE(reason_of("rtstruct.dcm").find("holds no image"), std::string::npos) << reason_of("rtstruct.dcm");
  EXPECT_NE(reason_of("test-SR.dcm").find("holds no image"), std::string::npos) << reason_of("test-SR.dcm");
  EXPECT_NE(reason_of("SC_rgb_rle_2frame.dcm").find("multi-frame"), std::string::npos);
  EXPECT_NE(reason_of("README.txt").find("not readable as DICOM"), std::string::npos) << reason_of("README.txt");
  // The image series reads as if the other files were not there.
  const auto volume = iris::io::read_image(dir.string());
  EXPECT_EQ(volume.voxels.sizes(), (std::vector<int64_t>{20, 256, 256}));
  // A folder of only such objects says so, naming one.
  const std::string msg = error_of([&] { iris::io::list_dicom_series(extra.string()); });
  EXPECT_NE(msg.find("holds no DICOM image series"), std::string::npos) << msg;
  fs::remove_all(dir);
}
