// Names read from files (DICOM UIDs, CSV cells, dataset.json entries) become
// path components only through safe_path_component; outputs are checked with
// lies_inside; label keys and JSON keys are read strictly; CSV fields quoted.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "iris/common/csv.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/folder_lock.h"
#include "iris/common/json.h"
#include "support/test_support.h"

namespace fs = std::filesystem;

using iris::testing::error_of;

TEST(FileNames, SafeNamesStayAsTheyAre) {
  for (const char* name : {"1.2.840.113619.2.55.3", "ct_001", "a b", "Ünïcode", "x.."})
    EXPECT_EQ(iris::safe_path_component(name), name);
}

TEST(FileNames, UnsafeNamesBecomeOneDistinctComponent) {
  std::set<std::string> seen;
  for (const std::string& name : std::vector<std::string>{"../../x", "/etc/passwd", "..", ".", "", "a/b", "a\\b", std::string("a\0b", 3),
                                 "line\nbreak", ".hidden", std::string(300, 'u'), "a_b"}) {
    const std::string safe = iris::safe_path_component(name);
    EXPECT_TRUE(iris::is_safe_path_component(safe)) << safe;
    EXPECT_NE(safe.front(), '.') << safe;
    EXPECT_EQ(safe.find('/'), std::string::npos) << safe;
    EXPECT_EQ(fs::path(safe).filename().string(), safe);
    EXPECT_TRUE(seen.insert(safe).second) << "two names map to " << safe;
  }
  // Two unsafe names that differ only in the unsafe character stay apart.
  EXPECT_NE(iris::safe_path_component("a/b"), iris::safe_path_component("a\\b"));
  EXPECT_LE(iris::safe_path_component(std::string(300, 'u')).size(), 200u);
}

TEST(FileNames, LiesInsideResolvesDotsAndLinks) {
  const fs::path root = fs::temp_directory_path() / ("iris_lies_inside_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "out" / "sub");
  fs::create_directories(root / "elsewhere");
  fs::create_symlink(root / "elsewhere", root / "out" / "link");
  const std::string out = (root / "out").string();
  EXPECT_TRUE(iris::lies_inside(out, out));
  EXPECT_TRUE(iris::lies_inside(out, out + "/sub/x.nii.gz"));
  EXPECT_TRUE(iris::lies_inside(out + "/", out + "/new/folder/x.nii.gz"));
  EXPECT_FALSE(iris::lies_inside(out, out + "/../x.nii.gz"));
  EXPECT_FALSE(iris::lies_inside(out, out + "/sub/../../elsewhere/x.nii.gz"));
  EXPECT_FALSE(iris::lies_inside(out, out + "/link/x.nii.gz")) << "a link out of the folder";
  EXPECT_FALSE(iris::lies_inside(out, (root / "outside").string())) << "a sibling sharing the prefix";
  EXPECT_FALSE(iris::lies_inside(out, "/etc/passwd"));
  fs::remove_all(root);
}

TEST(FileNames, LabelKeysAreWholeNumbersFrom0To65535) {
  EXPECT_EQ(iris::parse_label_key("0", "f"), 0);
  EXPECT_EQ(iris::parse_label_key("65535", "f"), 65535);
  for (const char* bad : {"-3", "65536", "1099511627776", "1.5", "", "one", " 1", "0x10"}) {
    const std::string e = error_of([&] { iris::parse_label_key(bad, "dataset.json: labels"); });
    EXPECT_EQ(e.rfind("dataset.json: labels: label key '", 0), 0u) << "'" << bad << "' gave '" << e << "'";
  }
}

TEST(Json, AKeyTwiceInOneObjectIsRefused) {
  EXPECT_EQ(iris::parse_json(R"({"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]})", "x.json")["b"]["a"], 2);
  EXPECT_NE(error_of([] { iris::parse_json(R"({"a": 1, "a": 2})", "x.json"); }).find("x.json: the key 'a' appears twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { iris::parse_json(R"({"o": {"k": 1, "k": 1}})", "x.json"); }).find("'k' appears twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { iris::parse_json(R"({"a": )", "x.json"); }).find("x.json: is not valid JSON"), std::string::npos);
}

TEST(Csv, FieldsThatWouldShiftARowAreQuoted) {
  EXPECT_EQ(iris::csv_quoted("1.2.3"), "1.2.3");
  EXPECT_EQ(iris::csv_quoted("a,b"), "\"a,b\"");
  EXPECT_EQ(iris::csv_quoted("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(iris::csv_quoted("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(iris::csv_quoted("cr\r"), "\"cr\r\"");
}

TEST(FolderLock, ASecondHolderIsRefusedNamingTheFirst) {
  const fs::path dir = fs::temp_directory_path() / ("iris_folder_lock_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    iris::FolderLock first(dir.string(), "train.output_dir");
    // flock locks belong to open files: a second open in this process conflicts as another process would.
    const std::string e = error_of([&] { iris::FolderLock second(dir.string(), "train.output_dir"); });
    EXPECT_NE(e.find("is in use by another run (process " + std::to_string(::getpid())), std::string::npos) << e;
    EXPECT_NE(e.find("train.output_dir"), std::string::npos) << e;
  }
  EXPECT_NO_THROW(iris::FolderLock again(dir.string(), "train.output_dir")) << "released with its holder";
  fs::remove_all(dir);
}
