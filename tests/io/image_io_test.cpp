// Image reading and writing on real files. Expected geometry and voxel values
// were read independently of ITK: NIfTI header fields and voxel bytes with
// Python's struct/gzip modules (sform/qform rows converted RAS -> LPS by
// negating the first two rows), so a wrong ITK convention would show here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <torch/types.h>

#include "support/test_support.h"
#include "iris/common/error.h"
#include "iris/io/image_io.h"

using iris::testing::error_of;

namespace fs = std::filesystem;
using iris::io::Geometry;
using iris::io::Image;

namespace {

const std::string kTemplates = "/usr/share/mricron/templates/";
// Written at set-up by tools/make_test_fixtures.py with nibabel, from nilearn's
// ICBM152 2009 template and nibabel's own test files.
const std::string kFixtures = iris::testing::kFixtures;
const std::string kKmeans =
    "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz";



void expect_geometry(const Geometry& g, std::array<long, 3> size, std::array<double, 3> spacing,
                     std::array<double, 3> origin, std::array<double, 9> direction) {
  EXPECT_EQ(g.size, size);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(g.spacing[i], spacing[i], 1e-5) << "spacing " << i;
    EXPECT_NEAR(g.origin[i], origin[i], 1e-4) << "origin " << i;
  }
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(g.direction[i], direction[i], 1e-6) << "direction " << i;
}

float voxel(const Image& img, long x, long y, long z) {
  return img.voxels[z][y][x].item<float>();
}

class ImageIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("iris_io_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string tmp(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> files_in_tmp() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    return names;
  }
  fs::path dir_;
};

}  // namespace

// ch2: NIfTI-1 uint8, sform_code 4, srow = identity + (-90,-125,-71) in RAS.
TEST_F(ImageIoTest, ReadsCh2TemplateWithGeometryAndValues) {
  const std::string path = kTemplates + "ch2.nii.gz";
  REQUIRE_DATA(path);
  const Image img = iris::io::read_image(path);
  EXPECT_EQ(img.source, path);
  EXPECT_EQ(img.voxels.scalar_type(), torch::kFloat);
  EXPECT_EQ(img.voxels.sizes(), (std::vector<int64_t>{181, 217, 181}));
  expect_geometry(img.geometry, {181, 217, 181}, {1, 1, 1}, {90, 125, -71},
                  {-1, 0, 0, 0, -1, 0, 0, 0, 1});
  // Sum and one voxel from the raw bytes (Python): x fastest, offset 352.
  EXPECT_EQ(img.voxels.sum(torch::kDouble).item<double>(), 317151210.0);
  EXPECT_EQ(img.voxels.max().item<float>(), 254.0f);
  EXPECT_EQ(voxel(img, 90, 108, 90), 33.0f);
}

// ICBM152 2009: the same volume as big-endian NIfTI-1 uint8 and as NIfTI-2
// little-endian float32 (nibabel). sform: x = i - 98, y = j - 134, z = k - 72
// (RAS). Sum and voxels from numpy on nibabel's array.
TEST_F(ImageIoTest, BigEndianNifti1AndNifti2GiveTheSameImage) {
  const std::string be = kFixtures + "mni152_be.nii.gz";
  const std::string v2 = kFixtures + "mni152_nifti2.nii.gz";
  REQUIRE_DATA(be);
  REQUIRE_DATA(v2);
  const Image a = iris::io::read_image(be);
  const Image b = iris::io::read_image(v2);
  for (const Image* img : {&a, &b}) {
    expect_geometry(img->geometry, {197, 233, 189}, {1, 1, 1}, {98, 134, -72},
                    {-1, 0, 0, 0, -1, 0, 0, 0, 1});
    EXPECT_EQ(img->voxels.sum(torch::kDouble).item<double>(), 333468829.0);
    EXPECT_EQ(voxel(*img, 98, 134, 72), 71.0f);
    EXPECT_EQ(voxel(*img, 60, 100, 90), 171.0f);
  }
  EXPECT_TRUE(torch::equal(a.voxels, b.voxels));
}

// nibabel's anatomical.nii (big-endian int16, 3-D) and the same voxels written
// by nibabel little-endian with a fourth axis of one: same image. qform b,c,d
// = (0,1,0), qfac -1; sform x = -2i + 32, y = 2j - 40, z = 2k - 16 (RAS).
TEST_F(ImageIoTest, EndiannessAndTrailingUnitAxisDoNotMatter) {
  const std::string big = kFixtures + "anatomical_be.nii";
  const std::string little = kFixtures + "anatomical_4d.nii.gz";
  REQUIRE_DATA(big);
  REQUIRE_DATA(little);
  const Image b = iris::io::read_image(big);
  const Image l = iris::io::read_image(little);
  EXPECT_TRUE(torch::equal(b.voxels, l.voxels));
  EXPECT_TRUE(b.geometry.same_grid(l.geometry));
  expect_geometry(b.geometry, {33, 41, 25}, {2, 2, 2}, {-32, 40, -16}, {1, 0, 0, 0, -1, 0, 0, 0, 1});
  EXPECT_EQ(b.voxels.sum(torch::kDouble).item<double>(), 284166082.0);
  EXPECT_EQ(voxel(b, 16, 20, 12), 11881.0f);
  EXPECT_EQ(voxel(b, 10, 30, 5), 6777.0f);
}

// KmeansTest: int16, pixdim (2,2,3), qform quaternion (0, .7071, .7071),
// offset (0,-254,0) RAS: i -> -x, j -> +z, k -> +y. An oblique permutation.
TEST_F(ImageIoTest, ReadsPermutedAxesFromQform) {
  REQUIRE_DATA(kKmeans);
  const Image img = iris::io::read_image(kKmeans);
  expect_geometry(img.geometry, {128, 128, 62}, {2, 2, 3}, {0, 254, 0},
                  {1, 0, 0, 0, 0, -1, 0, 1, 0});
  EXPECT_EQ(img.voxels.sum(torch::kDouble).item<double>(), 19533798.0);
  EXPECT_EQ(voxel(img, 64, 64, 31), 97.0f);
}

TEST_F(ImageIoTest, ReadsLabelsAsInt32) {
  const std::string path = kTemplates + "aal.nii.gz";
  REQUIRE_DATA(path);
  const Image labels = iris::io::read_labels(path);
  EXPECT_EQ(labels.voxels.scalar_type(), torch::kInt);
  EXPECT_EQ(std::get<0>(at::_unique(labels.voxels)).numel(), 117);  // 0 + 116 AAL regions
  EXPECT_EQ(labels.voxels.max().item<int>(), 116);
  EXPECT_EQ((labels.voxels != 0).sum().item<int64_t>(), 1479969);
  EXPECT_EQ(labels.voxels[44][118][57].item<int>(), 37);  // first voxel of label 37
  // aal and ch2 share the MNI grid.
  const Image ch2 = iris::io::read_image(kTemplates + "ch2.nii.gz");
  EXPECT_NO_THROW(iris::io::check_same_grid(labels, ch2));
}

TEST_F(ImageIoTest, RoundTripKeepsGeometryAndLabelsExactly) {
  const std::string path = kTemplates + "aal.nii.gz";
  REQUIRE_DATA(path);
  REQUIRE_DATA(kKmeans);
  Image labels = iris::io::read_labels(path);
  const Image oblique = iris::io::read_image(kKmeans);
#ifdef IRIS_HAVE_ITK
  const std::vector<std::string> formats{".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"};
#else
  const std::vector<std::string> formats{".nii", ".nii.gz"};  // the build without ITK writes NIfTI only
#endif
  for (const std::string& ext : formats) {
    SCOPED_TRACE(ext);
    const std::string out = tmp("labels" + ext);
    iris::io::write_image(labels, out);
    const Image back = iris::io::read_labels(out);
    EXPECT_TRUE(torch::equal(back.voxels, labels.voxels));
    EXPECT_TRUE(back.geometry.same_grid(labels.geometry, 1e-4)) << back.geometry.describe();

    const std::string out_float = tmp("oblique" + ext);
    iris::io::write_image(oblique, out_float);
    const Image back_float = iris::io::read_image(out_float);
    EXPECT_TRUE(torch::equal(back_float.voxels, oblique.voxels));
    EXPECT_TRUE(back_float.geometry.same_grid(oblique.geometry, 1e-4))
        << back_float.geometry.describe() << " vs " << oblique.geometry.describe();
  }
  // Small dtypes are written as such and come back as the same integers.
  for (auto dtype : {torch::kByte, torch::kShort}) {
    Image small = labels;
    small.voxels = labels.voxels.to(dtype);
    iris::io::write_image(small, tmp("small.nii.gz"));
    EXPECT_TRUE(torch::equal(iris::io::read_labels(tmp("small.nii.gz")).voxels, labels.voxels));
  }
  // .mhd keeps its data file next to it and no temporary is left over.
  for (const auto& name : files_in_tmp()) EXPECT_NE(name.front(), '.') << name;
}

// A [C,Z,Y,X] tensor becomes a 4-D file; the header is checked byte by byte.
TEST_F(ImageIoTest, WritesFourDimensionalProbabilityMaps) {
  Image probs;
  probs.geometry.size = {5, 4, 3};
  probs.geometry.spacing = {1.5, 2.0, 2.5};
  probs.geometry.origin = {-10, 20, 30};
  probs.voxels = torch::rand({2, 3, 4, 5});
  const std::string out = tmp("probs.nii");
  iris::io::write_image(probs, out);

  std::ifstream in(out, std::ios::binary);
  char header[348];
  in.read(header, sizeof header);
  ASSERT_TRUE(in);
  int16_t dim[8];
  float pixdim[8];
  std::memcpy(dim, header + 40, sizeof dim);  // the test host is little-endian like ITK's output
  std::memcpy(pixdim, header + 76, sizeof pixdim);
  EXPECT_EQ(dim[0], 4);
  EXPECT_EQ(dim[1], 5);
  EXPECT_EQ(dim[2], 4);
  EXPECT_EQ(dim[3], 3);
  EXPECT_EQ(dim[4], 2);
  EXPECT_FLOAT_EQ(pixdim[1], 1.5f);
  EXPECT_FLOAT_EQ(pixdim[3], 2.5f);
  EXPECT_FLOAT_EQ(pixdim[4], 1.0f);

  const std::string msg = error_of([&] { iris::io::read_image(out); });
  EXPECT_NE(msg.find(out), std::string::npos) << msg;
  EXPECT_NE(msg.find("is 4-D (5x4x3x2); a 3-D image is needed"), std::string::npos) << msg;
}

TEST_F(ImageIoTest, RejectsFiveDimensionalFile) {
  const std::string path = kFixtures + "vectors_5d.nii";
  REQUIRE_DATA(path);
  const std::string msg = error_of([&] { iris::io::read_image(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  // dim[5] = 3 holds vector components: not one value per voxel.
  EXPECT_NE(msg.find("is 5-D (16x12x8x1x3); a 3-D image is needed"), std::string::npos) << msg;
}

TEST_F(ImageIoTest, BadFilesGiveErrorsNamingTheFile) {
  const std::string source = kTemplates + "ch2.nii.gz";
  REQUIRE_DATA(source);
  // Truncated gzip: the first half of a real file.
  const std::string truncated = tmp("truncated.nii.gz");
  {
    std::ifstream in(source, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(truncated, std::ios::binary).write(bytes.data(), bytes.size() / 2);
  }
  const std::string text = tmp("notes.nii.gz");
  std::ofstream(text) << "this is a text file, not an image\n";
  const std::string missing = tmp("missing.nii.gz");
  const std::string not_nifti = kFixtures + "not_nifti.nii";  // nibabel's tiny.mnc

  for (const std::string& bad : {truncated, text, missing, not_nifti}) {
    const std::string msg = error_of([&] { iris::io::read_image(bad); });
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_GT(msg.size(), bad.size() + 10) << "no reason given: " << msg;
  }
  EXPECT_NE(error_of([&] { iris::io::read_image(missing); }).find("file not found"),
            std::string::npos);
  EXPECT_NE(error_of([&] { iris::io::read_labels(truncated); }).find(truncated),
            std::string::npos);
}

TEST_F(ImageIoTest, RejectsNanVoxelsAndNonIntegerLabels) {
  Image img;
  img.geometry.size = {4, 3, 2};
  img.voxels = torch::zeros({2, 3, 4});
  img.voxels[1][2][3] = std::nanf("");
  iris::io::write_image(img, tmp("nan.nii.gz"));
  std::string msg = error_of([&] { iris::io::read_image(tmp("nan.nii.gz")); });
  EXPECT_NE(msg.find(tmp("nan.nii.gz")), std::string::npos) << msg;
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;

  img.voxels = torch::zeros({2, 3, 4});
  img.voxels[0][0][1] = 2.5f;
  iris::io::write_image(img, tmp("fraction.nii.gz"));
  msg = error_of([&] { iris::io::read_labels(tmp("fraction.nii.gz")); });
  EXPECT_NE(msg.find("1 non-integer voxel"), std::string::npos) << msg;
  img.voxels[0][0][1] = 2.0f;  // float storage but integer values is fine
  iris::io::write_image(img, tmp("whole.nii.gz"));
  EXPECT_EQ(iris::io::read_labels(tmp("whole.nii.gz")).voxels.sum().item<int>(), 2);
}

#ifdef IRIS_HAVE_ITK  // MetaImage is read by ITK
TEST_F(ImageIoTest, RejectsShearedDirection) {
  // A hand-written MetaImage whose 2nd axis leans towards the 1st.
  std::ofstream(tmp("sheared.mhd")) << "ObjectType = Image\nNDims = 3\n"
                                       "TransformMatrix = 1 0 0 0.5 1 0 0 0 1\n"
                                       "DimSize = 2 2 2\nElementType = MET_UCHAR\n"
                                       "ElementDataFile = sheared.raw\n";
  std::ofstream(tmp("sheared.raw"), std::ios::binary) << std::string(8, '\1');
  const std::string msg = error_of([&] { iris::io::read_image(tmp("sheared.mhd")); });
  EXPECT_NE(msg.find(tmp("sheared.mhd")), std::string::npos) << msg;
  EXPECT_NE(msg.find("not orthonormal"), std::string::npos) << msg;
}
#else
TEST_F(ImageIoTest, FormatsOtherThanNiftiNameTheBuildThatReadsThem) {
  std::ofstream(tmp("image.nrrd")) << "NRRD0004\n";
  std::string msg = error_of([&] { iris::io::read_image(tmp("image.nrrd")); });
  EXPECT_NE(msg.find("without ITK"), std::string::npos) << msg;
  msg = error_of([&] { iris::io::read_image(kTemplates); });  // a folder is read as DICOM
  EXPECT_NE(msg.find("reads NIfTI only"), std::string::npos) << msg;
  Image img;
  img.geometry.size = {2, 2, 2};
  img.voxels = torch::zeros({2, 2, 2});
  msg = error_of([&] { iris::io::write_image(img, tmp("out.mha")); });
  EXPECT_NE(msg.find("writes .nii and .nii.gz only"), std::string::npos) << msg;
}
#endif

TEST_F(ImageIoTest, FailedWriteLeavesNothing) {
  Image img;
  img.geometry.size = {4, 3, 2};
  img.voxels = torch::ones({2, 3, 4});
  // The target is a folder, so the final rename fails after ITK wrote the
  // temporary file: it must be cleaned up.
  fs::create_directory(tmp("taken.nii.gz"));
  EXPECT_NE(error_of([&] { iris::io::write_image(img, tmp("taken.nii.gz")); }).find("taken.nii.gz"),
            std::string::npos);
  EXPECT_EQ(files_in_tmp(), std::vector<std::string>{"taken.nii.gz"});
  fs::remove(tmp("taken.nii.gz"));

  Image wrong = img;
  wrong.voxels = wrong.voxels.to(torch::kDouble);
  EXPECT_NE(error_of([&] { iris::io::write_image(wrong, tmp("double.nii.gz")); }).find("dtype"),
            std::string::npos);
  wrong.voxels = torch::ones({2, 3, 5});
  EXPECT_NE(error_of([&] { iris::io::write_image(wrong, tmp("shape.nii.gz")); }).find("shape"),
            std::string::npos);
  EXPECT_NE(error_of([&] { iris::io::write_image(img, tmp("image.png")); }).find("format"),
            std::string::npos);
  EXPECT_NE(error_of([&] { iris::io::write_image(img, tmp("no/such/folder/x.nii")); })
                .find("does not exist"),
            std::string::npos);
  EXPECT_TRUE(files_in_tmp().empty());
}

TEST_F(ImageIoTest, CheckSameGridNamesBothFilesAndGeometries) {
  const std::string a = kTemplates + "ch2.nii.gz";
  const std::string b = kFixtures + "mni152_be.nii.gz";
  REQUIRE_DATA(a);
  REQUIRE_DATA(b);
  const Image ia = iris::io::read_image(a);
  const Image ib = iris::io::read_image(b);
  const std::string msg = error_of([&] { iris::io::check_same_grid(ia, ib); });
  EXPECT_NE(msg.find(a), std::string::npos) << msg;
  EXPECT_NE(msg.find(b), std::string::npos) << msg;
  EXPECT_NE(msg.find(ia.geometry.describe()), std::string::npos) << msg;
  EXPECT_NE(msg.find(ib.geometry.describe()), std::string::npos) << msg;
  // Within tolerance passes, beyond it fails.
  Image shifted = ia;
  shifted.geometry.origin[0] += 5e-5;
  EXPECT_NO_THROW(iris::io::check_same_grid(ia, shifted));
  shifted.geometry.origin[0] += 1e-3;
  EXPECT_THROW(iris::io::check_same_grid(ia, shifted), iris::Error);
}
