#pragma once
// The text forms of label values on command lines, one parser each:
// "1,3,5-7" (values and ranges) and "91-116:1,77:2" (relabelling).
#include <string>
#include <vector>

namespace iris {

// "1,3, 5-7" -> {1, 3, 5, 6, 7}: whole numbers >= 0, ranges LO-HI with
// LO <= HI, spaces around items allowed. iris::Error naming `where` (a flag)
// and the item for anything else ("5x", "-1", "5-1", "").
std::vector<long> parse_label_values(const std::string& text, const std::string& where);

struct LabelMapping {
  long low = 0, high = 0;  // values low..high
  long value = 0;          // become this value
};
// "91-116:1,77-78:2,5:0" -> mappings; same rules for the numbers.
std::vector<LabelMapping> parse_label_mapping(const std::string& text, const std::string& where);

// "a,b, c" -> {"a", "b", "c"}: items trimmed; empty items dropped, or kept
// when their position means something (memory-bank ids: "liver,,spleen").
std::vector<std::string> split_comma_list(const std::string& text, bool keep_empty = false);

}  // namespace iris
