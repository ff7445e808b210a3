#pragma once
// The text forms of label values on command lines, one parser each:
// "1,3,5-7" (values and ranges) and "91-116:1,77:2" (relabelling), and
// the integer type label maps are kept in.
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris {

// "1,3, 5-7" -> {1, 3, 5, 6, 7}: whole numbers >= 0, ranges LO-HI with
// LO <= HI, spaces around items allowed. An iris::SettingError naming
// `where` (the setting, or a program's own flag) and the item for anything
// else ("5x", "-1", "5-1", "").
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

// `voxels` (label values >= 0) in the smallest integer type that holds them
// all: uint8 below 256, int16 below 32768, else int32. `highest` >= 0 sets
// the type from the values that could occur (a task's labels) rather than
// from those present, so every output of one task has the same type.
at::Tensor narrow_labels(const at::Tensor& voxels, long highest = -1);

}  // namespace iris
