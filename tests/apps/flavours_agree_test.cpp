// The two builds of iris segment a NIfTI file alike (#34 item 8): the build
// without ITK (GPU nodes) runs the same jobs as the ITK build it was
// configured beside (IRIS_ITK_BUILD_DIR, which `make test` passes when the ITK
// build exists) and must write the same voxels on the same grid. Compiled
// only into that build; CMake says at configure time whether it is.
#include <gtest/gtest.h>

#ifdef IRIS_ITK_BUILD_DIR

#include <filesystem>
#include <string>

#include <ATen/ATen.h>

#include "../support/test_support.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

const std::string kItkBuild = IRIS_ITK_BUILD_DIR;
const std::string kKmeans = "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz";
const std::string kTemplates = "/usr/share/mricron/templates/";
const std::string kModel = std::string(IRIS_TEST_DATA_DIR) + "/../models/demo_brain.iris";
const std::string kMni152 = iris::testing::kFixtures + "mni152_2009.nii.gz";

// Runs `program arguments` from both builds, each writing `output` in its own
// folder, and expects the same label voxels on the same grid.
void expect_same_output(const std::string& program, const std::string& arguments, const fs::path& dir,
                        const std::string& output) {
  const std::string builds[2] = {kItkBuild, iris::testing::program_path("")};
  iris::io::Image written[2];
  for (int b = 0; b < 2; ++b) {
    const fs::path out = dir / (b == 0 ? "itk" : "noitk");
    fs::create_directories(out);
    const auto run = iris::testing::run_program(builds[b] + "/" + program,
                                                arguments + " --output " + (out / output).string(),
                                                (out / (output + ".log")).string());
    ASSERT_EQ(run.exit_code, 0) << builds[b] << "/" << program << ": " << run.output;
    written[b] = iris::io::read_labels((out / output).string());
  }
  const iris::io::Image &itk = written[0], &own = written[1];
  EXPECT_TRUE(itk.geometry.same_grid(own.geometry, 0)) << itk.geometry.describe() << " vs " << own.geometry.describe();
  ASSERT_EQ(itk.voxels.sizes(), own.voxels.sizes()) << output;
  const long differ = itk.voxels.ne(own.voxels).sum().item<long>();
  EXPECT_EQ(differ, 0) << output << ": " << differ << " of " << itk.voxels.numel()
                       << " voxels differ between the ITK build and the build without it";
  EXPECT_GT(itk.voxels.gt(0).sum().item<long>(), 0) << output << " is empty";
}

}  // namespace

TEST(Flavours, TheItkBuildAndTheBuildWithoutItkWriteTheSameMasks) {
  REQUIRE_DATA(kModel);
  REQUIRE_DATA(kKmeans);
  REQUIRE_DATA(kMni152);
  REQUIRE_DATA(kTemplates + "ch2bet.nii.gz");
  for (const char* program : {"iris-infer", "iris-labels"})
    ASSERT_TRUE(fs::exists(kItkBuild + "/" + program))
        << kItkBuild << "/" << program << " is missing: build the ITK flavour first (make build)";
  const fs::path dir = iris::testing::temp_folder("flavours");

  // The demo's references: Colin27's brain, and two AAL structures (thalamus
  // 77-78 as 1, putamen 73-74 as 2), written once for both builds.
  const iris::io::Image bet = iris::io::read_image(kTemplates + "ch2bet.nii.gz");
  iris::io::Image brain;
  brain.geometry = bet.geometry;
  brain.voxels = bet.voxels.gt(0).to(at::kByte).contiguous();
  iris::io::write_image(brain, (dir / "colin_brain.nii.gz").string());
  const iris::io::Image aal = iris::io::read_labels(kTemplates + "aal.nii.gz");
  const at::Tensor structures = aal.voxels.ge(77).logical_and(aal.voxels.le(78)).to(at::kByte) +
                                2 * aal.voxels.ge(73).logical_and(aal.voxels.le(74)).to(at::kByte);
  iris::io::Image colin_structures;
  colin_structures.geometry = aal.geometry;
  colin_structures.voxels = structures.contiguous();
  iris::io::write_image(colin_structures, (dir / "colin_structures.nii.gz").string());

  const std::string reference = " --model " + kModel + " --reference " + kTemplates + "ch2.nii.gz --quiet";
  // A 1 mm brain onto KmeansTest's 2x2x3 mm LSA grid and back.
  expect_same_output("iris-infer",
                     reference + " --reference-mask " + (dir / "colin_brain.nii.gz").string() + " --query " + kKmeans +
                         " --keep-largest",
                     dir, "brain.nii.gz");
  // Two classes in one pass onto the MNI152 average.
  expect_same_output("iris-infer",
                     reference + " --reference-mask " + (dir / "colin_structures.nii.gz").string() + " --query " +
                         kMni152,
                     dir, "structures.nii.gz");
  // A label map carried through world coordinates (the demo's baseline).
  expect_same_output("iris-labels",
                     "resample --input " + kTemplates + "aal.nii.gz --like " + kKmeans, dir, "aal_on_kmeans.nii.gz");
}

#endif  // IRIS_ITK_BUILD_DIR
