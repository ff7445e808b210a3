// iris-eval --html on real label maps (the AAL atlas against shifted and
// damaged copies, over the ch2 T1 template), then the report rendered by
// headless Chromium: the screenshot must show the outlines in the legend's
// colours and the fills, and every <img> of the page must be a PNG that
// exists. A two-label case checks each label's colour against its legend.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
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
  std::map<uint32_t, int64_t> counts;
  int64_t tinted = 0, grey = 0, total = 0;  // tinted: neither grey nor white-ish
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
    ++c.counts[(r << 16) | (g << 8) | b];
    if (std::max({r, g, b}) - std::min({r, g, b}) > 40) ++c.tinted;
    if (r == g && g == b && r > 30 && r < 225) ++c.grey;
  }
  return c;
}

// The legend's swatches of a report page: label title -> "#rrggbb".
std::map<std::string, std::string> legend_colours(const std::string& html) {
  const std::regex swatch("<span class=\"swatch\" style=\"background:(#[0-9a-f]{6})\"></span>([^<]*)");
  std::map<std::string, std::string> out;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), swatch); it != std::sregex_iterator(); ++it)
    out[(*it)[2].str()] = (*it)[1].str();
  return out;
}

std::array<int, 3> rgb_of_hex(const std::string& hex) {
  const long v = std::stol(hex.substr(1), nullptr, 16);
  return {static_cast<int>(v >> 16), static_cast<int>((v >> 8) & 255), static_cast<int>(v & 255)};
}

// Pixels of a PNG of exactly this colour.
int64_t pixels_of_colour(const fs::path& png, const std::array<int, 3>& rgb) {
  const auto counts = colours_of_png(png).counts;
  const auto found = counts.find(static_cast<uint32_t>((rgb[0] << 16) | (rgb[1] << 8) | rgb[2]));
  return found == counts.end() ? 0 : found->second;
}

TEST_F(IrisEvalReport, EachLabelInItsLegendColourAndAMissedLabelIsAnOutlineWithoutFill) {
  // Two boxes on a 1 mm grid without an image (blank background, grey 20):
  // label 1 predicted exactly, label 2 missed by the prediction.
  iris::io::Image reference;
  reference.voxels = at::zeros({40, 48, 48}, at::kShort);
  reference.geometry.size = {48, 48, 40};
  reference.voxels.slice(0, 10, 30).slice(1, 6, 22).slice(2, 6, 22).fill_(1);
  reference.voxels.slice(0, 10, 30).slice(1, 28, 42).slice(2, 28, 42).fill_(2);
  iris::io::Image prediction = reference;
  prediction.voxels = reference.voxels.masked_fill(reference.voxels.eq(2), 0);
  for (const char* sub : {"gt", "pred"}) fs::create_directories(root / sub);
  iris::io::write_image(reference, (root / "gt" / "two.nii.gz").string());
  iris::io::write_image(prediction, (root / "pred" / "two.nii.gz").string());
  const fs::path report = root / "report";
  ASSERT_EQ(exit_code_of(eval_program() + " --reference " + shell_quoted(root / "gt") + " --prediction " +
                         shell_quoted(root / "pred") + " --html " + shell_quoted(report) + " > " +
                         shell_quoted(root / "eval.log") + " 2>&1"),
            0)
      << read_text(root / "eval.log");

  const auto legend = legend_colours(read_text(report / "index.html"));
  ASSERT_EQ(legend.count("1"), 1u) << read_text(report / "index.html");
  ASSERT_EQ(legend.count("2"), 1u);
  EXPECT_NE(legend.at("1"), legend.at("2")) << "each label its own colour";
  // The axial slice through label 2's error crosses both boxes.
  const fs::path axial = report / "001_two_axial.png";
  ASSERT_TRUE(fs::is_regular_file(axial));
  const auto one = rgb_of_hex(legend.at("1")), two = rgb_of_hex(legend.at("2"));
  EXPECT_GT(pixels_of_colour(axial, one), 100) << "label 1's reference outline in its legend colour";
  EXPECT_GT(pixels_of_colour(axial, two), 100) << "label 2's reference outline in its legend colour";
  // The prediction's fill: 40 % of the label's colour over the grey 20.
  auto fill = [](const std::array<int, 3>& c) {
    std::array<int, 3> f{};
    for (int k = 0; k < 3; ++k) f[k] = static_cast<int>(std::lround(0.6 * 20 + 0.4 * c[k]));
    return f;
  };
  EXPECT_GT(pixels_of_colour(axial, fill(one)), 1000) << "label 1 predicted: filled";
  EXPECT_EQ(pixels_of_colour(axial, fill(two)), 0) << "label 2 missed: an outline with no fill";
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
  // Outlines in the legends' colours (the error ticks' swatch included).
  // (within 6 levels per channel: a browser may round colours.)
  int64_t outlined = 0;
  const auto legend = legend_colours(html);
  EXPECT_GT(legend.size(), 10u) << "the legends list the AAL labels in the slices";
  for (const auto& [packed, count] : c.counts) {
    const int r = static_cast<int>(packed >> 16), g = static_cast<int>((packed >> 8) & 255), b = static_cast<int>(packed & 255);
    for (const auto& [title, hex] : legend) {
      const auto rgb = rgb_of_hex(hex);
      if (std::abs(r - rgb[0]) <= 6 && std::abs(g - rgb[1]) <= 6 && std::abs(b - rgb[2]) <= 6) {
        outlined += count;
        break;
      }
    }
  }
  EXPECT_GT(outlined, 200) << "reference outlines visible in the legend colours";
  EXPECT_GT(c.tinted, 2000) << "prediction fills visible";
  EXPECT_GT(c.grey, 20000) << "the T1 image under the outlines";
}

}  // namespace
