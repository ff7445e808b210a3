#include "iris/common/csv.h"

namespace iris {

std::string csv_quoted(const std::string& text) {
  const bool blank_edge = !text.empty() && (text.front() == ' ' || text.back() == ' ');
  if (text.find_first_of(",\"\n\r") == std::string::npos && !blank_edge) return text;
  std::string out = "\"";
  for (char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace iris
