// DICOM-SEG written over the 20-slice oblique MR series (tools/make_test_fixtures.py), read back,
// and checked with an independent reader (gdcmdump, libgdcm-tools). UIDs and
// positions below were read with gdcmdump from the source files.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <torch/types.h>

#include "support/test_support.h"
#include "iris/common/error.h"
#include "iris/io/dicom.h"
#include "iris/io/dicom_seg.h"

using iris::testing::error_of;

namespace fs = std::filesystem;

namespace {

using iris::testing::kObliqueMr;
// UIDs tools/make_test_fixtures.py gives the series.
const std::string kSeriesUid = "1.2.826.0.1.3680043.8.498.7770001.1";
const std::string kStudyUid = "1.2.826.0.1.3680043.8.498.7770001.2";
const std::string kFirstSliceSopInstance = "1.2.826.0.1.3680043.8.498.7770001.4.1";  // brain_001.dcm
const std::string kSegSopClass = "1.2.840.10008.5.1.4.1.1.66.4";

fs::path temp_root() { return fs::temp_directory_path() / ("iris_dicom_seg_" + std::to_string(::getpid())); }

fs::path temp_folder(const std::string& name) {
  const fs::path dir = temp_root() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string gdcmdump(const std::string& path) {
  std::string out;
  FILE* pipe = ::popen(("/usr/bin/gdcmdump '" + path + "' 2>&1").c_str(), "r");
  if (!pipe) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  ::pclose(pipe);
  return out;
}

size_t entries_in(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

// Reading the series is slow (each file pads its pixels with 2.5 MB): once.
struct DicomSegTest : ::testing::Test {
  static void SetUpTestSuite() {
    if (!fs::exists(kObliqueMr)) return;  // REQUIRE_DATA fails each test
    iris::io::DicomReadOptions quiet;
    quiet.spacing_warn_fraction = 0.05;  // its ~1 % unevenness is expected
    series = iris::io::read_dicom_series(kObliqueMr, "", quiet);
  }
  static void TearDownTestSuite() { fs::remove_all(temp_root()); }
  static inline iris::io::Image series;
};

// Two intensity bands of the series as labels 1 and 3 (3 is not a segment
// number, so label values must survive the round trip); both occur on every
// slice (checked with pydicom: 141247 and 317460 voxels).
iris::io::Image two_band_labels(const iris::io::Image& image) {
  iris::io::Image labels;
  labels.geometry = image.geometry;
  const at::Tensor v = image.voxels;
  labels.voxels = (v.gt(200) & v.le(400)).to(at::kByte) + v.gt(400).to(at::kByte) * 3;
  return labels;
}

}  // namespace

TEST_F(DicomSegTest, TwoLabelsRoundTripOnTheObliqueSeries) {
  REQUIRE_DATA(kObliqueMr);
  const iris::io::Image& image = series;
  const iris::io::Image labels = two_band_labels(image);
  const fs::path dir = temp_folder("roundtrip");
  const std::string out = (dir / "labels.dcm").string();
  iris::io::DicomSegOptions options;
  options.segment_names = {{1, "grey band"}, {3, "bright band"}};

  const auto start = std::chrono::steady_clock::now();
  iris::io::write_dicom_seg(out, labels, kObliqueMr, "", options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ timing   ] write_dicom_seg, 20 slices 256x256, 2 segments: " << seconds * 1000 << " ms, "
            << fs::file_size(out) << " bytes\n";
  EXPECT_EQ(entries_in(dir), 1u);  // no temporary left behind

  // Back without a grid: the frames' own positions span all 20 slices.
  const auto read_start = std::chrono::steady_clock::now();
  const iris::io::DicomSeg seg = iris::io::read_dicom_seg(out);
  std::cout << "[ timing   ] read_dicom_seg: "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - read_start).count() * 1000 << " ms\n";
  EXPECT_TRUE(seg.labels.geometry.same_grid(image.geometry, 1e-4))
      << seg.labels.geometry.describe() << " vs " << image.geometry.describe();
  EXPECT_TRUE(at::equal(seg.labels.voxels, labels.voxels.to(at::kInt)));
  EXPECT_EQ(seg.referenced_series_uid, kSeriesUid);
  EXPECT_EQ(seg.study_instance_uid, kStudyUid);
  EXPECT_EQ(seg.patient_id, "ICBM2009");
  EXPECT_NE(seg.series_instance_uid, kSeriesUid);
  ASSERT_EQ(seg.segments.size(), 2u);
  EXPECT_EQ(seg.segments[0].segment_number, 1);
  EXPECT_EQ(seg.segments[0].label_value, 1);
  EXPECT_EQ(seg.segments[0].label, "grey band");
  EXPECT_EQ(seg.segments[1].segment_number, 2);
  EXPECT_EQ(seg.segments[1].label_value, 3);
  EXPECT_EQ(seg.segments[1].label, "bright band");
  for (const auto& s : seg.segments) {
    EXPECT_EQ(s.algorithm_type, "AUTOMATIC");
    EXPECT_EQ(s.algorithm_name, "iris");
    EXPECT_EQ(s.category_code, "91723000^SCT^Anatomical Structure");
    EXPECT_EQ(s.type_code, "91723000^SCT^Anatomical Structure");
    EXPECT_EQ(s.frames, 20);
  }
  // And onto the source grid.
  const iris::io::DicomSeg on_grid = iris::io::read_dicom_seg(out, &image.geometry);
  EXPECT_TRUE(at::equal(on_grid.labels.voxels, labels.voxels.to(at::kInt)));

  // An independent reader sees a SEG of 40 frames over the source series.
  const std::string dump = gdcmdump(out);
  EXPECT_NE(dump.find("(0008,0016) UI [" + kSegSopClass + "]"), std::string::npos) << dump.substr(0, 3000);
  EXPECT_NE(dump.find("(0008,0060) CS [SEG"), std::string::npos);
  EXPECT_NE(dump.find("(0020,000d) UI [" + kStudyUid + "]"), std::string::npos);
  EXPECT_NE(dump.find("(0010,0020) LO [ICBM2009]"), std::string::npos);
  EXPECT_NE(dump.find("(0028,0008) IS [40]"), std::string::npos);
  EXPECT_NE(dump.find("(0062,0001) CS [BINARY]"), std::string::npos);
  const size_t referenced = dump.find("(0008,1115) SQ");  // ReferencedSeriesSequence
  ASSERT_NE(referenced, std::string::npos);
  EXPECT_NE(dump.find("(0020,000e) UI [" + kSeriesUid + "]", referenced), std::string::npos);
  // Frame 1 comes from brain_001: its position and its SOP instance.
  EXPECT_NE(dump.find("(0020,0032) DS [-110.5000\\-78.3063\\-72.7575"), std::string::npos);
  EXPECT_NE(dump.find("(0008,1155) UI [" + kFirstSliceSopInstance + "]"), std::string::npos);
  EXPECT_NE(dump.find("(0020,0037) DS [1.000000\\0.000000\\0.000000\\0.000000\\0.990960\\0.134158"),
            std::string::npos);
}

// A label on a few slices gets frames on those slices only; read back without
// a grid it covers just them, on the grid of the series it lands in place.
TEST_F(DicomSegTest, FramesOnlyWhereASegmentHasVoxels) {
  REQUIRE_DATA(kObliqueMr);
  const iris::io::Image& image = series;
  iris::io::Image labels;
  labels.geometry = image.geometry;
  labels.voxels = at::zeros({20, 256, 256}, at::kShort);
  labels.voxels.slice(0, 5, 10).slice(1, 100, 140).slice(2, 90, 160).fill_(2);
  const fs::path dir = temp_folder("partial");
  const std::string out = (dir / "partial.dcm").string();
  iris::io::write_dicom_seg(out, labels, kObliqueMr, kSeriesUid);

  const std::string dump = gdcmdump(out);
  EXPECT_NE(dump.find("(0028,0008) IS [5 ]"), std::string::npos) << dump.substr(0, 3000);
  EXPECT_NE(dump.find("(0062,0005) LO [label 2"), std::string::npos);  // unnamed: "label N"

  const iris::io::DicomSeg on_grid = iris::io::read_dicom_seg(out, &image.geometry);
  EXPECT_TRUE(at::equal(on_grid.labels.voxels, labels.voxels.to(at::kInt)));
  const iris::io::DicomSeg own = iris::io::read_dicom_seg(out);
  EXPECT_EQ(own.labels.voxels.sizes(), (std::vector<int64_t>{5, 256, 256}));
  EXPECT_EQ(own.labels.voxels.sum().item<long>(), 2L * 5 * 40 * 70);
  // Its origin is slice 5 of the series (brain_006), within the rounding of
  // the source positions.
  const auto& g = image.geometry;
  for (int r = 0; r < 3; ++r)
    EXPECT_NEAR(own.labels.geometry.origin[r], g.origin[r] + 5 * g.spacing[2] * g.direction[3 * r + 2], 0.1);
}

TEST_F(DicomSegTest, GridMismatchEmptyMaskAndNonDicomSourceLeaveNoFile) {
  REQUIRE_DATA(kObliqueMr);
  const iris::io::Image& image = series;
  const fs::path dir = temp_folder("errors");
  const std::string out = (dir / "bad.dcm").string();

  iris::io::Image shifted = two_band_labels(image);
  shifted.geometry.origin[2] += 0.01;
  std::string msg = error_of([&] { iris::io::write_dicom_seg(out, shifted, kObliqueMr); });
  EXPECT_NE(msg.find(out), std::string::npos) << msg;
  EXPECT_NE(msg.find("not on the grid"), std::string::npos) << msg;

  iris::io::Image cropped = two_band_labels(image);
  cropped.voxels = cropped.voxels.slice(0, 0, 19).contiguous();
  cropped.geometry.size[2] = 19;
  msg = error_of([&] { iris::io::write_dicom_seg(out, cropped, kObliqueMr); });
  EXPECT_NE(msg.find("not on the grid"), std::string::npos) << msg;

  iris::io::Image empty;
  empty.geometry = image.geometry;
  empty.voxels = at::zeros({20, 256, 256}, at::kByte);
  msg = error_of([&] { iris::io::write_dicom_seg(out, empty, kObliqueMr); });
  EXPECT_NE(msg.find(out), std::string::npos) << msg;
  EXPECT_NE(msg.find("nothing to write"), std::string::npos) << msg;

  const fs::path not_dicom = temp_folder("not_dicom");
  std::ofstream(not_dicom / "notes.txt") << "not a DICOM file\n";
  msg = error_of([&] { iris::io::write_dicom_seg(out, two_band_labels(image), not_dicom.string()); });
  EXPECT_NE(msg.find(out), std::string::npos) << msg;
  EXPECT_NE(msg.find(not_dicom.string()), std::string::npos) << msg;

  EXPECT_EQ(entries_in(dir), 0u);  // neither the output nor a temporary
}

TEST_F(DicomSegTest, ReadingRefusesFilesThatAreNotSeg) {
  REQUIRE_DATA(kObliqueMr);
  const std::string mr_slice = kObliqueMr + "/brain_001.dcm";
  std::string msg = error_of([&] { iris::io::read_dicom_seg(mr_slice); });
  EXPECT_NE(msg.find(mr_slice), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a DICOM Segmentation"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1.2.840.10008.5.1.4.1.1.4"), std::string::npos) << msg;  // MR Image Storage

  const fs::path dir = temp_folder("not_seg");
  const std::string text = (dir / "labels.dcm").string();
  std::ofstream(text) << "plain text\n";
  msg = error_of([&] { iris::io::read_dicom_seg(text); });
  EXPECT_NE(msg.find("not a DICOM file"), std::string::npos) << msg;
}
