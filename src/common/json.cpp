#include "iris/common/json.h"

#include <cmath>

namespace iris {

namespace {
// Strings no JSON text of iris contains otherwise (they start with a NUL).
const std::string kNaN = std::string(1, '\0') + "NaN", kInf = std::string(1, '\0') + "Infinity",
                  kMinusInf = std::string(1, '\0') + "-Infinity";

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

std::string dump_any(const Json& value, int indent, bool python) {
  std::string text = value.dump(indent);
  for (const auto& [marker, literal] : {std::make_pair(kNaN, std::string("NaN")),
                                        std::make_pair(kInf, std::string("Infinity")),
                                        std::make_pair(kMinusInf, std::string("-Infinity"))})
    text = replace_all(text, Json(marker).dump(), python ? literal : "null");
  return text + "\n";
}
}  // namespace

Json number(double value) {
  if (std::isnan(value)) return kNaN;
  if (std::isinf(value)) return value > 0 ? kInf : kMinusInf;
  return value;
}

std::string dump(const Json& value, int indent, bool python_non_finite) {
  return dump_any(value, indent, python_non_finite);
}


}  // namespace iris
