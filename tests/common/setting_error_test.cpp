// The library names settings, never a program's flags (#37): a SettingError
// names its setting, its reason names other settings with setting_ref, and
// each program writes them as its flags (apps/common: name_settings, run_main).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "iris/common/setting_error.h"

namespace fs = std::filesystem;
using namespace iris;

TEST(SettingError, NamesItsSettingAndWritesOtherSettingsAsTheCallerNamesThem) {
  // Text of a path or value is never taken for a setting, braces or not.
  const SettingError e("pool_dir", "only with " + setting_ref("strategy") + " retrieval, not in {strategy}/x");
  EXPECT_EQ(e.setting(), "pool_dir");
  EXPECT_TRUE(e.about_setting());
  EXPECT_EQ(std::string(e.what()), "pool_dir: only with strategy retrieval, not in {strategy}/x");
  const auto flags = [](const std::string& s) { return s == "strategy" ? std::string("--strategy") : s; };
  EXPECT_EQ(e.reason_naming(flags), "only with --strategy retrieval, not in {strategy}/x");

  const InputError file("a.iris", "give " + setting_ref("preprocess") + " none or " + setting_ref("fast"));
  EXPECT_FALSE(file.about_setting());
  EXPECT_EQ(std::string(file.what()), "a.iris: give preprocess none or fast");
  EXPECT_EQ(file.reason_naming([](const std::string& s) { return "--" + s; }), "give --preprocess none or --fast");
  EXPECT_EQ(SettingsNamingError::fill("cut " + std::string(1, '\x01') + "open", nullptr), "cut \x01open");
}

TEST(SettingError, AValuesOriginIsASettingOrAFile) {
  try {
    throw_at_origin("{overrides}", "train.lr: expected a finite number");
    ADD_FAILURE() << "nothing thrown";
  } catch (const SettingError& e) {
    EXPECT_EQ(e.setting(), "overrides");
  }
  try {
    throw_at_origin("base.yaml", "train.lr: expected a finite number");
    ADD_FAILURE() << "nothing thrown";
  } catch (const SettingsNamingError&) {
    ADD_FAILURE() << "a file is not a setting";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "base.yaml");
  }
}

// Read off the sources: no library error is placed at a flag ("--name"); a
// new one fails here, naming the file and line. (Advice to run another
// program, "iris-import --trust-legacy ...", is a command, not a flag of
// the program that reads the message.)
TEST(SettingError, TheLibraryPlacesNoErrorAtAFlag) {
  const fs::path root = fs::path(IRIS_TEST_DATA_DIR) / "..";
  const std::regex at_flag(R"re(Error\(\s*(std::string\()?"--)re");
  long files = 0;
  std::string found;
  for (const auto& e : fs::recursive_directory_iterator(root / "src")) {
    if (!e.is_regular_file() || e.path().extension() != ".cpp") continue;
    ++files;
    std::ifstream in(e.path());
    std::string line;
    for (long number = 1; std::getline(in, line); ++number)
      if (std::regex_search(line, at_flag)) found += e.path().string() + ":" + std::to_string(number) + ": " + line + "\n";
  }
  EXPECT_GT(files, 50);
  EXPECT_EQ(found, "") << "library errors name settings (SettingError), programs map them to flags";
}

// A program's names (app::name_settings installs them) reach every message
// of the process, also one kept in a report or a warning; the setting keeps
// its own name.
TEST(SettingError, AProgramsNamesReachEveryMessage) {
  setting_namer() = [](const std::string& s) { return s == "pool_dir" ? std::string("--pool") : "--" + s; };
  const SettingError e("pool_dir", "only with " + setting_ref("strategy") + " retrieval");
  const InputError file("x.task", "give " + setting_ref("task_file"));
  const std::string warning = "replaced (" + setting_name("nan_as") + ")";
  setting_namer() = nullptr;
  EXPECT_EQ(std::string(e.what()), "--pool: only with --strategy retrieval");
  EXPECT_EQ(e.setting(), "pool_dir");
  EXPECT_EQ(e.where(), "--pool");
  EXPECT_EQ(std::string(file.what()), "x.task: give --task_file");
  EXPECT_EQ(warning, "replaced (--nan_as)");
  EXPECT_EQ(setting_name("nan_as"), "nan_as");
}
