// The label-list syntax of --labels, --values, --map and --class-names.
#include <gtest/gtest.h>

#include <functional>

#include "iris/common/error.h"
#include "iris/common/label_list.h"

using iris::parse_label_mapping;
using iris::parse_label_values;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const iris::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(LabelList, ValuesAndRanges) {
  EXPECT_EQ(parse_label_values("1,3, 5-7", "--labels"), (std::vector<long>{1, 3, 5, 6, 7}));
  EXPECT_EQ(parse_label_values("0", "--labels"), (std::vector<long>{0}));
  for (const char* bad : {"5x", "-1", "5-1", "", "1,,2", "1.5", "1-"}) {
    const std::string e = error_of([&] { parse_label_values(bad, "--labels"); });
    EXPECT_EQ(e.rfind("--labels: ", 0), 0u) << "'" << bad << "' gave '" << e << "'";
  }
  EXPECT_NE(error_of([] { parse_label_values("5-1", "--values"); }).find("range 5-1 is empty"), std::string::npos);
  EXPECT_NE(error_of([] { parse_label_values("0-999999", "--values"); }).find("too long"), std::string::npos);
}

TEST(LabelList, Mappings) {
  const auto m = parse_label_mapping("91-116:1, 77:2,5:0", "--map");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].low, 91);
  EXPECT_EQ(m[0].high, 116);
  EXPECT_EQ(m[0].value, 1);
  EXPECT_EQ(m[1].low, 77);
  EXPECT_EQ(m[1].high, 77);
  EXPECT_EQ(m[1].value, 2);
  EXPECT_EQ(m[2].value, 0);
  for (const char* bad : {"91-116", "1:x", "3-2:1", ":1", ""}) {
    const std::string e = error_of([&] { parse_label_mapping(bad, "--map"); });
    EXPECT_EQ(e.rfind("--map: ", 0), 0u) << "'" << bad << "' gave '" << e << "'";
  }
}

TEST(LabelList, CommaListsKeepEmptyItemsOnlyWhenAsked) {
  EXPECT_EQ(iris::split_comma_list("liver,,spleen "), (std::vector<std::string>{"liver", "spleen"}));
  EXPECT_EQ(iris::split_comma_list("liver,, spleen", true), (std::vector<std::string>{"liver", "", "spleen"}));
  EXPECT_TRUE(iris::split_comma_list("").empty());
}
