// containers/iris.def against what it must agree with (the image itself is
// built and tested by scripts/container_check.sh, which needs root and the
// network): the LibTorch it labels is the wheel scripts/setup.sh pins, its
// %runscript runs the iris program named first and refuses anything else,
// and container_check.sh reads %post and %test out of it.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {
const fs::path kRepo = fs::path(IRIS_TEST_DATA_DIR) / "..";

std::string text_of(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The lines of section %name, as container_check.sh's awk reads them.
std::string section(const std::string& def, const std::string& name) {
  std::string out, line;
  std::istringstream in(def);
  bool on = false;
  while (std::getline(in, line)) {
    if (line.rfind("%", 0) == 0 && line.size() > 1 && std::isalpha(static_cast<unsigned char>(line[1]))) {
      on = line.substr(0, line.find_first_of(" \t")) == "%" + name;
      continue;
    }
    if (on) out += line + "\n";
  }
  return out;
}
}  // namespace

TEST(ContainerDef, AgreesWithSetupAndRunsOnlyIrisPrograms) {
  const std::string def = text_of(kRepo / "containers/iris.def"), setup = text_of(kRepo / "scripts/setup.sh");
  std::smatch pinned, labelled;
  ASSERT_TRUE(std::regex_search(setup, pinned, std::regex(R"(torch==([0-9.]+))")));
  ASSERT_TRUE(std::regex_search(def, labelled, std::regex(R"(iris\.libtorch ([0-9.]+))")));
  EXPECT_EQ(pinned[1], labelled[1]) << "the image labels another LibTorch than setup.sh installs";
  const std::string post = section(def, "post");
  for (const char* step : {"scripts/setup.sh", "make build", "ctest", "cmake --install", "rm -rf /opt/iris/src"})
    EXPECT_NE(post.find(step), std::string::npos) << step << " missing from %post:\n" << post;
  EXPECT_NE(section(def, "test").find("Dice"), std::string::npos);

  const fs::path dir = iris::testing::temp_folder("container_def");
  std::ofstream(dir / "runscript.sh") << section(def, "runscript");
  const std::string path = "PATH=" + iris::testing::shell_quoted(fs::path(iris::testing::program_path("iris-data")).parent_path().string()) + ":$PATH ";
  auto r = iris::testing::run_program(path + "bash " + iris::testing::shell_quoted((dir / "runscript.sh").string()),
                                      "iris-data --help", (dir / "ok.log").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("convert"), std::string::npos) << r.output;
  r = iris::testing::run_program("bash " + iris::testing::shell_quoted((dir / "runscript.sh").string()), "ls /",
                                 (dir / "refused.log").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("usage: apptainer run --nv iris.sif iris-PROGRAM"), std::string::npos) << r.output;
  // container_check.sh reads the definition itself, with this section rule.
  const std::string check = text_of(kRepo / "scripts/container_check.sh");
  EXPECT_NE(check.find("DEF=containers/iris.def"), std::string::npos);
  EXPECT_NE(check.find("section post"), std::string::npos);
  EXPECT_NE(check.find("section test"), std::string::npos);
}
