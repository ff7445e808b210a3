// iris reads and writes NIfTI itself (so the build without ITK has it too).
// Here, in the ITK build, ITK 5.2's own NIfTI reader is the independent
// judge: every NIfTI file installed on the machine, and headers written to
// exercise each sform/qform case, must give the same voxels and geometry.
// Resampling without ITK is held to ITK's resampler the same way.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkNiftiImageIO.h>

#include "iris/io/image_io.h"
#include "iris/io/resample.h"
#include "../../src/io/resample_detail.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::io::Geometry;
using iris::io::Image;
using iris::testing::temp_folder;

namespace {

// The image as ITK's NIfTI reader sees it.
Image itk_read(const std::string& path) {
  using Volume = itk::Image<float, 3>;
  auto reader = itk::ImageFileReader<Volume>::New();
  reader->SetImageIO(itk::NiftiImageIO::New());
  reader->SetFileName(path);
  reader->Update();
  Volume::Pointer v = reader->GetOutput();
  Image out;
  const auto size = v->GetLargestPossibleRegion().GetSize();
  for (int i = 0; i < 3; ++i) {
    out.geometry.size[i] = static_cast<long>(size[i]);
    out.geometry.spacing[i] = v->GetSpacing()[i];
    out.geometry.origin[i] = v->GetOrigin()[i];
    for (int j = 0; j < 3; ++j) out.geometry.direction[3 * i + j] = v->GetDirection()(i, j);
  }
  out.voxels = at::from_blob(v->GetBufferPointer(), {static_cast<long>(size[2]), static_cast<long>(size[1]),
                                                     static_cast<long>(size[0])},
                             at::kFloat)
                   .clone();
  return out;
}

void expect_same(const Image& ours, const Image& itk, const std::string& what) {
  EXPECT_TRUE(ours.geometry.same_grid(itk.geometry, 1e-4))
      << what << "\n iris: " << ours.geometry.describe() << "\n ITK:  " << itk.geometry.describe();
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(ours.geometry.direction[i], itk.geometry.direction[i], 1e-4) << what;
  ASSERT_EQ(ours.voxels.sizes(), itk.voxels.sizes()) << what;
  const double scale = 1 + itk.voxels.abs().max().item<double>();
  EXPECT_LE((ours.voxels - itk.voxels).abs().max().item<double>(), 1e-6 * scale) << what;
}

std::vector<std::string> installed_nifti_files() {
  std::vector<std::string> files;
  for (const std::string dir : {std::string("/usr/share/mricron/templates/"),
                                std::string("/usr/share/doc/insighttoolkit5-examples/examples/Data/"),
                                iris::testing::kFixtures, iris::testing::kFixtures + "nibabel/"}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (iris::io::has_image_extension(name) && (name.find(".nii") != std::string::npos)) files.push_back(e.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
template <typename T>
void poke(std::string& header, size_t offset, T value) {
  std::memcpy(header.data() + offset, &value, sizeof(T));
}

}  // namespace

TEST(NiftiAgreement, EveryInstalledNiftiFileReadsAsItkReadsIt) {
  REQUIRE_DATA(std::string("/usr/share/mricron/templates/ch2.nii.gz"));
  int compared = 0;
  for (const auto& file : installed_nifti_files()) {
    Image ours;
    try {
      ours = iris::io::read_image(file);
    } catch (const iris::Error& e) {
      // Files iris refuses on purpose (4-D, 5-D, vectors, NaN) must be ones ITK does not read as a 3-D scalar volume either.
      const std::string why = e.what();
      EXPECT_TRUE(why.find("-D (") != std::string::npos || why.find("NaN") != std::string::npos ||
                  why.find("datatype") != std::string::npos || why.find("is not a NIfTI") != std::string::npos ||
                  why.find("hdr/.img") != std::string::npos || why.find("too short") != std::string::npos)
          << why;
      continue;
    }
    Image itk;
    try {
      itk = itk_read(file);
    } catch (const itk::ExceptionObject&) {
      // ITK 5.2 has no NIfTI-2 (ImageIoTest.BigEndianNifti1AndNifti2GiveTheSameImage covers those).
      EXPECT_NE(file.find("nifti2"), std::string::npos) << "ITK cannot read " << file << " but iris does";
      continue;
    }
    expect_same(ours, itk, file);
    ++compared;
  }
  std::printf("compared %d installed NIfTI files with ITK\n", compared);
  EXPECT_GE(compared, 15);
}

TEST(NiftiAgreement, WhatIrisWritesItkReadsWithTheSameGeometry) {
  const fs::path dir = temp_folder("nifti_itk_write");
  Image img;
  img.geometry.size = {9, 6, 5};
  img.geometry.spacing = {0.7, 1.1, 3.0};
  img.geometry.origin = {100.5, -20.25, 3.5};
  const double c = std::cos(0.3), s = std::sin(0.3);
  // A rotation about x then a flip of the first axis (determinant -1).
  img.geometry.direction = {-1, 0, 0, 0, c, -s, 0, s, c};
  img.voxels = at::randn({5, 6, 9});
  for (const char* name : {"w.nii", "w.nii.gz"}) {
    iris::io::write_image(img, (dir / name).string());
    expect_same(img, itk_read((dir / name).string()), name);
  }
  fs::remove_all(dir);
}

TEST(NiftiAgreement, SformAndQformChoicesFollowItk) {
  const fs::path dir = temp_folder("nifti_forms");
  Image img;
  img.geometry.size = {6, 5, 4};
  img.geometry.spacing = {1.5, 1.5, 2.0};
  img.geometry.origin = {10, 20, 30};
  img.voxels = at::rand({4, 5, 6});
  iris::io::write_image(img, (dir / "base.nii").string());
  const std::string base = bytes_of(dir / "base.nii");
  struct Case {
    const char* name;
    int16_t qform_code, sform_code;
    bool rotate_sform;  // make the sform disagree with the qform
  } cases[] = {{"both_scanner", 1, 1, false}, {"both_disagree_scanner", 1, 1, true},
               {"sform_aligned_disagree", 1, 2, true}, {"sform_only", 0, 2, true},
               {"qform_only", 1, 0, true},   {"neither", 0, 0, true}};
  for (const auto& c : cases) {
    std::string h = base;
    poke<int16_t>(h, 252, c.qform_code);
    poke<int16_t>(h, 254, c.sform_code);
    if (c.rotate_sform) {
      // sform: axes x and y swapped (a 90-degree rotation), origin moved.
      const float rows[3][4] = {{0, 1.5f, 0, -5}, {1.5f, 0, 0, 7}, {0, 0, 2.0f, 9}};
      for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 4; ++k) poke<float>(h, 280 + 16 * r + 4 * k, rows[r][k]);
    }
    const fs::path file = dir / (std::string(c.name) + ".nii");
    std::ofstream(file, std::ios::binary) << h;
    expect_same(iris::io::read_image(file.string()), itk_read(file.string()), c.name);
  }
  fs::remove_all(dir);
}

TEST(ResampleAgreement, OwnLinearAndNearestMatchItk) {
  const std::string path = "/usr/share/mricron/templates/ch2.nii.gz";
  REQUIRE_DATA(path);
  const Image ch2 = iris::io::read_image(path);
  // A coarse, rotated and shifted target grid reaching past the image on two sides.
  Geometry onto = iris::io::grid_with_spacing(ch2.geometry, {4.0, 3.5, 5.0});
  const double c = std::cos(0.2), s = std::sin(0.2);
  const double rotation[9] = {c, -s, 0, s, c, 0, 0, 0, 1};
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k) {
      double v = 0;
      for (int j = 0; j < 3; ++j) v += rotation[3 * r + j] * ch2.geometry.direction[3 * j + k];
      onto.direction[3 * r + k] = v;
    }
  onto.origin[0] += 7.3;
  onto.origin[2] -= 11.1;
  const at::Tensor labels = (ch2.voxels > ch2.voxels.mean()).to(at::kInt) + (ch2.voxels > 2 * ch2.voxels.mean()).to(at::kInt);
  for (auto interpolation : {iris::io::Interpolation::kLinear, iris::io::Interpolation::kNearest}) {
    const at::Tensor itk = iris::io::detail::resample_with_itk(ch2.voxels.contiguous(), ch2.geometry, onto, interpolation);
    const at::Tensor own = iris::io::detail::resample_native(ch2.voxels.contiguous(), ch2.geometry, onto, interpolation);
    ASSERT_EQ(own.sizes(), itk.sizes());
    const at::Tensor differs = (own - itk).abs() > 1e-3 * (1 + itk.abs());
    const double fraction = differs.to(at::kDouble).mean().item<double>();
    // Only points that fall exactly on a voxel boundary or the image edge may
    // round the other way.
    EXPECT_LT(fraction, 1e-3) << iris::io::interpolation_name(interpolation);
    EXPECT_GT(itk.abs().sum().item<double>(), 0);
  }
  const at::Tensor itk = iris::io::detail::resample_with_itk(labels.contiguous(), ch2.geometry, onto, iris::io::Interpolation::kNearest);
  const at::Tensor own = iris::io::detail::resample_native(labels.contiguous(), ch2.geometry, onto, iris::io::Interpolation::kNearest);
  EXPECT_EQ(own.scalar_type(), at::kInt);
  EXPECT_LT(own.ne(itk).to(at::kDouble).mean().item<double>(), 1e-3);
}
