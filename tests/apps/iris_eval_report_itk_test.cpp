// iris-eval --html on real label maps (the AAL atlas against shifted and
// damaged copies, over the ch2 T1 template), then the report rendered by
// headless Chromium: the screenshot must show the outlines, and every <img>
// of the page must be a PNG that exists.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkPNGImageIO.h>
#include <itkRGBAPixel.h>

#include "../support/test_support.h"
#include "iris/io/image_io.h"

namespace fs = std::filesystem;

namespace {

const char* kAtlas = "/usr/share/mricron/templates/aal.nii.gz";
const char* kT1 = "/usr/share/mricron/templates/ch2.nii.gz";  // same 181x217x181 grid

std::string eval_program() {
  const char* dir = std::getenv("IRIS_BIN_DIR");
  return std::string(dir ? dir : IRIS_BINARY_DIR) + "/iris-eval";
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int exit_code_of(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string shell_quoted(const fs::path& p) { return "'" + p.string() + "'"; }

class IrisEvalReport : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_DATA(kAtlas);
    REQUIRE_DATA(kT1);
    root = fs::temp_directory_path() / ("iris_eval_report_" + std::to_string(::getpid()));
    fs::remove_all(root);
    for (const char* sub : {"gt", "pred", "images"}) fs::create_directories(root / sub);
  }
  void TearDown() override {
    if (!root.empty() && !::testing::Test::HasFailure()) fs::remove_all(root);
  }
  fs::path root;
};

struct ScreenshotColours {
  std::set<uint32_t> distinct;
  int64_t red = 0, green = 0, grey = 0, total = 0;
};

ScreenshotColours colours_of_png(const fs::path& png) {
  using Pixel = itk::RGBAPixel<unsigned char>;
  using Picture = itk::Image<Pixel, 2>;
  auto reader = itk::ImageFileReader<Picture>::New();
  reader->SetImageIO(itk::PNGImageIO::New());
  reader->SetFileName(png.string());
  reader->Update();
  Picture::Pointer picture = reader->GetOutput();
  const auto size = picture->GetLargestPossibleRegion().GetSize();
  const Pixel* p = picture->GetBufferPointer();
  ScreenshotColours c;
  c.total = static_cast<int64_t>(size[0] * size[1]);
  for (int64_t i = 0; i < c.total; ++i) {
    const int r = p[i][0], g = p[i][1], b = p[i][2];
    c.distinct.insert((r << 16) | (g << 8) | b);
    if (r > 200 && g < 60 && b < 60) ++c.red;
    if (g > 200 && r < 60 && b < 60) ++c.green;
    if (r == g && g == b && r > 30 && r < 225) ++c.grey;
  }
  return c;
}

TEST_F(IrisEvalReport, ChromiumShowsOutlinesAndEveryImageExists) {
  const iris::io::Image atlas = iris::io::read_labels(kAtlas);
  // Case "shifted": the whole atlas moved by (3, -2, 2) voxels (mean Dice
  // about 0.63). Case "damaged": labels 30..99 of 116 dropped from the
  // prediction (Dice 0 there, 1 elsewhere: mean about 0.4), so it is the
  // worse case and must come first in the report.
  iris::io::Image shifted = atlas, damaged = atlas;
  shifted.voxels = at::roll(atlas.voxels, {3, -2, 2}, {0, 1, 2}).contiguous();
  damaged.voxels = atlas.voxels.clone();
  damaged.voxels.masked_fill_((damaged.voxels >= 30).logical_and(damaged.voxels < 100), 0);
  for (const char* name : {"shifted", "damaged"})
    iris::io::write_image(atlas, (root / "gt" / (std::string(name) + ".nii.gz")).string());
  iris::io::write_image(shifted, (root / "pred" / "shifted.nii.gz").string());
  iris::io::write_image(damaged, (root / "pred" / "damaged.nii.gz").string());
  // Images matched by case name, one with nnU-Net's channel suffix.
  const iris::io::Image t1 = iris::io::read_image(kT1);
  iris::io::write_image(t1, (root / "images" / "shifted.nii.gz").string());
  iris::io::write_image(t1, (root / "images" / "damaged_0000.nii.gz").string());

  const fs::path report = root / "report";
  const std::string eval = eval_program() + " --reference " + shell_quoted(root / "gt") + " --prediction " +
                           shell_quoted(root / "pred") + " --output " + shell_quoted(root / "summary.json") +
                           " --html " + shell_quoted(report) + " --image " + shell_quoted(root / "images") +
                           " > " + shell_quoted(root / "eval.log") + " 2>&1";
  ASSERT_EQ(exit_code_of(eval), 0) << read_text(root / "eval.log");
  const std::string html = read_text(report / "index.html");
  ASSERT_FALSE(html.empty());
  // Nothing of the temporary build folder is left beside the report.
  for (const auto& entry : fs::directory_iterator(root))
    EXPECT_EQ(entry.path().filename().string().find(".report."), std::string::npos) << entry.path();

  // Every <img> is a PNG inside the report folder; three views per case.
  const std::regex img_src("<img src=\"([^\"]+)\"");
  int images = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), img_src); it != std::sregex_iterator(); ++it) {
    const fs::path png = report / (*it)[1].str();
    ASSERT_TRUE(fs::is_regular_file(png)) << png;
    EXPECT_EQ(read_text(png).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
    ++images;
  }
  EXPECT_EQ(images, 6);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  const size_t damaged_at = html.find("<h3>1. damaged"), shifted_at = html.find("<h3>2. shifted");
  EXPECT_NE(damaged_at, std::string::npos) << "worst case first";
  EXPECT_NE(shifted_at, std::string::npos);
  EXPECT_NE(html.find("± "), std::string::npos);

  // Render it as a browser would.
  const fs::path screenshot = root / "screenshot.png";
  const std::string chromium =
      "chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
      "--disable-background-networking --disable-component-update --disable-sync "
      "--hide-scrollbars --user-data-dir=" + shell_quoted(root / "chromium-profile") +
      " --screenshot=" + shell_quoted(screenshot) + " --window-size=1200,2000 " +
      shell_quoted("file://" + (report / "index.html").string()) + " > " + shell_quoted(root / "chromium.log") + " 2>&1";
  ASSERT_EQ(exit_code_of("command -v chromium > /dev/null"), 0)
      << "chromium not installed: run scripts/setup.sh";
  ASSERT_EQ(exit_code_of("timeout 120 " + chromium), 0) << read_text(root / "chromium.log");
  ASSERT_TRUE(fs::is_regular_file(screenshot)) << read_text(root / "chromium.log");
  const ScreenshotColours c = colours_of_png(screenshot);
  EXPECT_EQ(c.total, 1200 * 2000);
  EXPECT_GT(c.distinct.size(), 100u) << "a blank page has a handful of colours";
  EXPECT_GT(c.red, 200) << "prediction outlines visible";
  EXPECT_GT(c.green, 200) << "reference outlines visible";
  EXPECT_GT(c.grey, 20000) << "the T1 image under the outlines";
}

}  // namespace
