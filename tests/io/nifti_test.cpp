// iris' own NIfTI reader and writer (every build): sizes are checked against
// the file, damaged headers and voxels are errors naming the file, and what
// is written reads back exactly.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::io::Image;
using iris::testing::error_of;
using iris::testing::temp_folder;

namespace {

Image oblique_volume() {
  Image img;
  img.geometry.size = {7, 5, 4};
  img.geometry.spacing = {0.8, 1.25, 2.5};
  img.geometry.origin = {-12.5, 30.25, 7.0};
  // A rotation about z by 30 degrees, with the slice axis flipped.
  const double c = std::cos(M_PI / 6), s = std::sin(M_PI / 6);
  img.geometry.direction = {c, -s, 0, s, c, 0, 0, 0, -1};
  img.voxels = at::arange(7 * 5 * 4, at::kFloat).reshape({4, 5, 7}) * 0.5 - 3;
  return img;
}

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
template <typename T>
void poke(std::string& header, size_t offset, T value) {
  std::memcpy(header.data() + offset, &value, sizeof(T));
}

}  // namespace

TEST(Nifti, WrittenFilesReadBackExactly) {
  const fs::path dir = temp_folder("nifti_round_trip");
  const Image img = oblique_volume();
  for (const char* name : {"v.nii", "v.nii.gz"}) {
    iris::io::write_image(img, (dir / name).string());
    const Image back = iris::io::read_image((dir / name).string());
    EXPECT_TRUE(at::equal(back.voxels, img.voxels)) << name;
    EXPECT_TRUE(back.geometry.same_grid(img.geometry, 1e-5)) << name << ": " << back.geometry.describe();
  }
  // Labels in the smallest types, and 4-D probability maps.
  Image labels = img;
  labels.voxels = at::arange(140, at::kInt).reshape({4, 5, 7}).remainder(3).to(at::kShort);
  iris::io::write_image(labels, (dir / "l.nii.gz").string());
  EXPECT_TRUE(at::equal(iris::io::read_labels((dir / "l.nii.gz").string()).voxels, labels.voxels.to(at::kInt)));
  fs::remove_all(dir);
}

TEST(Nifti, ACutFileOrAnOffsetPastTheEndIsNotReadAsZeros) {
  const fs::path dir = temp_folder("nifti_cut");
  Image big = oblique_volume();
  big.geometry.size = {40, 40, 10};
  big.voxels = at::rand({10, 40, 40});
  iris::io::write_image(big, (dir / "v.nii").string());
  const std::string good = bytes_of(dir / "v.nii");
  // The last 5000 bytes missing (an interrupted copy).
  write_bytes(dir / "cut.nii", good.substr(0, good.size() - 5000));
  std::string msg = error_of([&] { iris::io::read_image((dir / "cut.nii").string()); });
  EXPECT_NE(msg.find("cut.nii"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bytes of voxel data but its header needs 64000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // vox_offset past the end of the file.
  std::string moved = good;
  poke<float>(moved, 108, static_cast<float>(good.size() + 4096));
  write_bytes(dir / "moved.nii", moved);
  msg = error_of([&] { iris::io::read_image((dir / "moved.nii").string()); });
  EXPECT_NE(msg.find("past the end of the file"), std::string::npos) << msg;
  // vox_offset inside the header.
  poke<float>(moved, 108, 100.0f);
  write_bytes(dir / "inside.nii", moved);
  msg = error_of([&] { iris::io::read_image((dir / "inside.nii").string()); });
  EXPECT_NE(msg.find("invalid vox_offset"), std::string::npos) << msg;
  // A gzipped file cut short.
  iris::io::write_image(big, (dir / "v.nii.gz").string());
  const std::string gz = bytes_of(dir / "v.nii.gz");
  write_bytes(dir / "cut.nii.gz", gz.substr(0, gz.size() / 2));
  msg = error_of([&] { iris::io::read_image((dir / "cut.nii.gz").string()); });
  EXPECT_NE(msg.find("cut.nii.gz"), std::string::npos) << msg;
  // A header shorter than 348 bytes, and a file that is no NIfTI at all.
  write_bytes(dir / "short.nii", good.substr(0, 200));
  EXPECT_NE(error_of([&] { iris::io::read_image((dir / "short.nii").string()); }).find("too short"), std::string::npos);
  write_bytes(dir / "text.nii", std::string(400, 'a'));
  EXPECT_NE(error_of([&] { iris::io::read_image((dir / "text.nii").string()); }).find("is not a NIfTI file"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(Nifti, AZeroVoxelSizeIsAnErrorUnlessTheSformGivesIt) {
  const fs::path dir = temp_folder("nifti_pixdim");
  iris::io::write_image(oblique_volume(), (dir / "v.nii").string());
  std::string h = bytes_of(dir / "v.nii");
  poke<float>(h, 80 + 4, 0.0f);  // pixdim[2] = 0
  // With the sform (written by iris, code 1) the size comes from its column length.
  write_bytes(dir / "sform.nii", h);
  const Image from_sform = iris::io::read_image((dir / "sform.nii").string());
  EXPECT_NEAR(from_sform.geometry.spacing[1], 1.25, 1e-5);
  // Without a sform there is nothing to take it from.
  poke<int16_t>(h, 254, 0);  // sform_code = 0
  write_bytes(dir / "qform.nii", h);
  const std::string msg = error_of([&] { iris::io::read_image((dir / "qform.nii").string()); });
  EXPECT_NE(msg.find("no voxel size along axis 1"), std::string::npos) << msg;
  poke<float>(h, 80 + 4, std::nanf(""));
  write_bytes(dir / "nan.nii", h);
  EXPECT_NE(error_of([&] { iris::io::read_image((dir / "nan.nii").string()); }).find("no voxel size"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Nifti, NonFiniteVoxelsAreRefusedOrReplacedOnRequest) {
  const fs::path dir = temp_folder("nifti_nan");
  Image img = oblique_volume();
  img.voxels.fill_(std::nanf(""));  // an all-NaN query
  iris::io::write_image(img, (dir / "nan.nii.gz").string());
  const std::string msg = error_of([&] { iris::io::read_image((dir / "nan.nii.gz").string()); });
  EXPECT_NE(msg.find("has 140 NaN or infinite voxel(s) of 140"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--nan-as"), std::string::npos) << msg;
  iris::io::ImageReadOptions o;
  o.nan_as = -1000;
  const Image replaced = iris::io::read_image((dir / "nan.nii.gz").string(), o);
  EXPECT_EQ(replaced.voxels.min().item<float>(), -1000);
  EXPECT_EQ(replaced.voxels.max().item<float>(), -1000);
  ASSERT_EQ(replaced.warnings.size(), 1u);
  EXPECT_NE(replaced.warnings[0].find("140 NaN or infinite voxel(s) replaced"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Nifti, LabelsMustBeWholeNumbersFromZero) {
  const fs::path dir = temp_folder("nifti_labels");
  Image img = oblique_volume();
  img.voxels = at::zeros({4, 5, 7}, at::kShort);
  img.voxels[1][2][3] = -1;
  iris::io::write_image(img, (dir / "negative.nii.gz").string());
  std::string msg = error_of([&] { iris::io::read_labels((dir / "negative.nii.gz").string()); });
  EXPECT_NE(msg.find("negative.nii.gz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has label value -1"), std::string::npos) << msg;
  img.voxels = at::zeros({4, 5, 7}, at::kFloat);
  img.voxels[0][0][1] = 2.5;
  iris::io::write_image(img, (dir / "half.nii.gz").string());
  msg = error_of([&] { iris::io::read_labels((dir / "half.nii.gz").string()); });
  EXPECT_NE(msg.find("1 non-integer voxel(s) (e.g. 2.5"), std::string::npos) << msg;
  fs::remove_all(dir);
}
