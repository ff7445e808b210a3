#include "iris/common/json.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <set>
#include <vector>

#include "iris/common/error.h"

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


Json parse_json(const std::string& text, const std::string& where) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  const Json::parser_callback_t check = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) keys.emplace_back();
    else if (event == Json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    else if (event == Json::parse_event_t::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
             duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json doc;
  try {
    doc = Json::parse(text, check);
  } catch (const Json::exception& e) {
    throw Error(where, std::string("is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw Error(where, "the key '" + duplicate + "' appears twice in one object");
  return doc;
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) throw Error(path, "cannot read");
  return parse_json(text, path);
}

}  // namespace iris
