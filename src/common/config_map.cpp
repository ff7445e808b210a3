#include "iris/common/config_map.h"

#include <map>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "iris/common/setting_error.h"
#include "iris/common/text.h"

namespace iris {
namespace {


std::string unquote(const std::string& s) {
  if (s.size() >= 2 && ((s.front() == '"' && s.back() == '"') || (s.front() == '\'' && s.back() == '\'')))
    return s.substr(1, s.size() - 2);
  return s;
}

}  // namespace

void throw_bad_value(const ConfigMap& m, const std::string& key, const std::string& reason) {
  const std::string& o = m.origin(key);
  if (o.empty()) throw Error(key, reason);
  throw_at_origin(o, key + ": " + reason);
}

void ConfigMap::set(const std::string& key, const std::string& value, const std::string& origin) {
  values_[key] = value;
  origins_[key] = origin;
}

bool ConfigMap::has(const std::string& key) const { return values_.count(key) > 0; }

const std::string& ConfigMap::get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw Error(key, "required configuration key is missing");
  return it->second;
}

const std::string& ConfigMap::origin(const std::string& key) const {
  static const std::string none;
  auto it = origins_.find(key);
  return it == origins_.end() ? none : it->second;
}

void ConfigMap::merge(const ConfigMap& other) {
  for (const auto& [k, v] : other.values_) set(k, v, other.origin(k));
}

ConfigMap ConfigMap::subtree(const std::string& prefix) const {
  ConfigMap out;
  const std::string p = prefix + ".";
  for (const auto& [k, v] : values_)
    if (k.compare(0, p.size(), p) == 0) out.set(k.substr(p.size()), v, origin(k));
  return out;
}

std::string ConfigMap::to_text() const {
  std::ostringstream s;
  for (const auto& [k, v] : values_) s << k << ": " << v << "\n";
  return s.str();
}

ConfigMap ConfigMap::parse_text(const std::string& text, const std::string& origin) {
  ConfigMap m;
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line = line.substr(0, hash);
    if (trim(line).empty()) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos)
      throw Error(origin + ":" + std::to_string(number), "expected 'key: value', got '" + trim(line) + "'");
    const std::string key = trim(line.substr(0, colon));
    const std::string value = unquote(trim(line.substr(colon + 1)));
    if (key.empty()) throw Error(origin + ":" + std::to_string(number), "empty key");
    if (m.has(key)) throw Error(origin + ":" + std::to_string(number), "key '" + key + "' is set twice");
    m.set(key, value, origin);
  }
  return m;
}

void ConfigMap::apply_override(const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw SettingError("overrides", "'" + assignment + "': expected key=value");
  set(trim(assignment.substr(0, eq)), unquote(trim(assignment.substr(eq + 1))), "{overrides}");
}

std::map<std::string, ConfigMap> read_config_sections(const std::string& path,
                                                      const std::vector<std::string>& overrides,
                                                      const std::vector<std::string>& sections) {
  if (sections.empty()) internal_error("read_config_sections", "no section");
  std::map<std::string, ConfigMap> out;
  for (const auto& s : sections) out[s];
  auto section_of = [&sections](const std::string& key) -> std::string {
    const auto dot = key.find('.');
    if (dot == std::string::npos) return "";
    const std::string head = key.substr(0, dot);
    return std::find(sections.begin(), sections.end(), head) != sections.end() ? head : "";
  };
  auto sections_text = [&sections] {
    std::string t;
    for (const auto& s : sections) t += (t.empty() ? "" : ", ") + s;
    return t;
  };
  if (!path.empty()) {
    const ConfigMap file = ConfigMap::load_yaml_file(path);
    bool has_section = false;
    for (const auto& [k, v] : file.entries()) has_section = has_section || !section_of(k).empty();
    if (!has_section) {
      out[sections.front()] = file;
    } else {
      for (const auto& [k, v] : file.entries()) {
        const std::string s = section_of(k);
        if (!s.empty()) out[s].set(k.substr(s.size() + 1), v, file.origin(k));
        else if (k.find('.') == std::string::npos)
          throw Error(path, "key '" + k + "' stands outside any section, beside the sections " + sections_text() +
                                ": put it under its section");
      }
    }
  }
  for (const auto& o : overrides) {
    if (o.find('=') == std::string::npos) out[sections.front()].apply_override(o);  // refused: no '='
    const std::string key = trim(o.substr(0, o.find('=')));
    const std::string s = section_of(key);
    if (s.empty() && key.find('.') != std::string::npos)
      throw SettingError("overrides", "'" + o + "': this program reads only the section" +
                                          (sections.size() > 1 ? "s " : " ") + sections_text() + " (write " +
                                          sections.front() + ".KEY=VALUE, or KEY=VALUE)");
    if (!s.empty() && trim(key.substr(s.size() + 1)).empty())
      throw SettingError("overrides", "'" + o + "': expected key=value");
    out[s.empty() ? sections.front() : s].apply_override(s.empty() ? o : trim(o).substr(s.size() + 1));
  }
  return out;
}

namespace {
// Splits "a: 1, b: [1, 2], c: x" at top-level commas.
std::vector<std::string> split_flow_items(const std::string& body) {
  std::vector<std::string> items;
  int depth = 0;
  std::string cur;
  for (char ch : body) {
    if (ch == '[' || ch == '{') ++depth;
    if (ch == ']' || ch == '}') --depth;
    if (ch == ',' && depth == 0) {
      items.push_back(trim(cur));
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (!trim(cur).empty()) items.push_back(trim(cur));
  return items;
}
// "[a, 'b']" -> "[a, b]", the form yaml-cpp's reader produces.
std::string normalise_flow_list(const std::string& value) {
  if (value.size() < 2 || value.front() != '[' || value.back() != ']') return value;
  std::string out = "[";
  const auto items = split_flow_items(value.substr(1, value.size() - 2));
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + unquote(items[i]);
  return out + "]";
}
}  // namespace

namespace {
// A key set twice is almost always a mistake (the second silently winning):
// refused, naming both lines.
void set_once(ConfigMap& m, std::map<std::string, int>& line_of, const std::string& key, const std::string& value,
              const std::string& path, int line) {
  const auto it = line_of.find(key);
  if (it != line_of.end())
    throw Error(path + ":" + std::to_string(line), "key '" + key + "' is set twice (lines " +
                                                       std::to_string(it->second) + " and " + std::to_string(line) +
                                                       "); remove one");
  line_of[key] = line;
  m.set(key, value, path + ":" + std::to_string(line));
}
}  // namespace

// Without yaml-cpp (the GPU-only build), the block-mapping subset of YAML that
// iris configs use: nested "key:" maps by indentation, scalars, flow lists
// [a, b] and one-level flow maps {k: v}. Anything else is refused clearly.
ConfigMap ConfigMap::parse_yaml_subset(const std::string& text, const std::string& path) {
  std::istringstream f(text);
  ConfigMap m;
  std::map<std::string, int> line_of;  // where each key was set, to refuse a second setting
  // The "key:" lines whose maps are still open: indent, dotted key, line,
  // and whether any key was set under it yet.
  struct Open {
    size_t indent;
    std::string key;
    int line;
    bool filled;
  };
  std::vector<Open> stack;
  // A "key:" with nothing under it is a null, as yaml-cpp reads it: "".
  auto close = [&](const Open& o) {
    if (!o.filled) set_once(m, line_of, o.key, "", path, o.line);
  };
  std::string line;
  int number = 0;
  while (std::getline(f, line)) {
    ++number;
    const std::string where = path + ":" + std::to_string(number);
    const auto hash = line.find(" #");
    if (hash != std::string::npos) line = line.substr(0, hash);
    if (!line.empty() && trim(line).rfind("#", 0) == 0) continue;
    if (trim(line).empty()) continue;
    const size_t indent = line.find_first_not_of(' ');
    const std::string body = trim(line);
    if (body.rfind("- ", 0) == 0) throw Error(where, "block lists are not supported without yaml-cpp; write [a, b]");
    const auto colon = body.find(':');
    if (colon == std::string::npos) throw Error(where, "expected 'key: value', got '" + body + "'");
    while (!stack.empty() && stack.back().indent >= indent) {
      close(stack.back());
      stack.pop_back();
    }
    const std::string prefix = stack.empty() ? "" : stack.back().key + ".";
    if (!stack.empty()) stack.back().filled = true;  // its parents were marked by its own line
    const std::string key = prefix + trim(body.substr(0, colon));
    const std::string value = trim(body.substr(colon + 1));
    if (value.empty()) {
      stack.push_back({indent, key, number, false});
    } else if (value.front() == '{') {
      if (value.back() != '}') throw Error(where, "flow map must end on the same line");
      for (const auto& item : split_flow_items(value.substr(1, value.size() - 2))) {
        const auto c = item.find(':');
        if (c == std::string::npos) throw Error(where, "expected 'key: value' in '" + item + "'");
        const std::string item_key = key + "." + trim(item.substr(0, c));
        set_once(m, line_of, item_key, normalise_flow_list(unquote(trim(item.substr(c + 1)))), path, number);
      }
    } else {
      set_once(m, line_of, key, normalise_flow_list(unquote(value)), path, number);
    }
  }
  for (auto it = stack.rbegin(); it != stack.rend(); ++it) close(*it);
  return m;
}

#ifndef IRIS_HAVE_YAML
ConfigMap ConfigMap::read_yaml_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(path, "cannot open configuration file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_yaml_subset(ss.str(), path);
}
#endif

namespace {
constexpr size_t kMaxIncludeDepth = 16;

std::string include_chain(const std::vector<std::string>& chain, const std::string& last) {
  std::string s;
  for (const auto& c : chain) s += c + " -> ";
  return s + last;
}

constexpr size_t kMaxIncludedFiles = 256;

// `chain`: the including files, as canonical paths, outermost first.
// `loaded`: each file read so far, resolved (a file included twice, as in a
// diamond, is read once: nested diamonds would otherwise read files an
// exponential number of times).
struct Loaded {
  std::map<std::string, ConfigMap> files;  // canonical path -> resolved
  size_t reads = 0;
};

ConfigMap load_with_includes(const std::string& path, std::vector<std::string>& chain, Loaded& loaded) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(fs::path(path), ec);
  const std::string here = ec ? path : canonical.string();
  if (std::find(chain.begin(), chain.end(), here) != chain.end())
    throw Error(chain.front(), "configuration includes form a loop: " + include_chain(chain, here));
  if (chain.size() >= kMaxIncludeDepth)
    throw Error(chain.front(), "configuration includes nest deeper than " + std::to_string(kMaxIncludeDepth) +
                                   ": " + include_chain(chain, here));
  if (const auto it = loaded.files.find(here); it != loaded.files.end()) return it->second;
  if (++loaded.reads > kMaxIncludedFiles)
    throw Error(chain.empty() ? path : chain.front(),
                "configuration includes read more than " + std::to_string(kMaxIncludedFiles) + " files");
  ConfigMap own = ConfigMap::read_yaml_file(path);
  ConfigMap out;
  if (own.has("include")) {
    const std::string value = own.get("include");
    const std::string where = own.origin("include").empty() ? path : own.origin("include");
    const std::vector<std::string> items = config_list_items(value);
    if (items.empty()) throw Error(where, "include: expected a file or a list of files, got '" + value + "'");
    chain.push_back(here);
    for (const auto& item : items) {
      fs::path included(item);
      if (included.is_relative()) included = (fs::path(path).parent_path() / included).lexically_normal();
      if (!fs::is_regular_file(included))
        throw Error(where, "include: no such file '" + included.string() +
                               "' (paths are relative to the including file" +
                               (chain.size() > 1 ? "; included as " + include_chain(chain, item) : std::string()) +
                               ")");
      out.merge(load_with_includes(included.string(), chain, loaded));
    }
    chain.pop_back();
    own.erase("include");
  }
  for (const auto& [k, v] : own.entries())
    if (k.rfind("include.", 0) == 0)
      throw_at_origin(own.origin(k).empty() ? path : own.origin(k),
                      "include: expected a file or a list of files, got a map ('" + k + "')");
  out.merge(own);
  loaded.files[here] = out;
  return out;
}
}  // namespace

ConfigMap ConfigMap::load_yaml_file(const std::string& path) {
  std::vector<std::string> chain;
  Loaded loaded;
  return load_with_includes(path, chain, loaded);
}

void ConfigMap::erase(const std::string& key) {
  values_.erase(key);
  origins_.erase(key);
}

long config_int(const ConfigMap& m, const std::string& key) {
  const std::string& v = m.get(key);
  try {
    size_t used = 0;
    long x = std::stol(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw_bad_value(m, key, "expected an integer, got '" + v + "'");
  }
}

double config_double(const ConfigMap& m, const std::string& key) {
  const std::string& v = m.get(key);
  try {
    size_t used = 0;
    double x = std::stod(v, &used);
    if (used != v.size() || !std::isfinite(x)) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw_bad_value(m, key, "expected a finite number, got '" + v + "'");
  }
}

bool config_bool(const ConfigMap& m, const std::string& key) {
  std::string v = m.get(key);
  std::transform(v.begin(), v.end(), v.begin(), ::tolower);
  if (v == "true" || v == "yes" || v == "on" || v == "1") return true;
  if (v == "false" || v == "no" || v == "off" || v == "0") return false;
  throw_bad_value(m, key, "expected true or false, got '" + v + "'");
}

std::vector<long> config_int_list(const ConfigMap& m, const std::string& key) {
  std::string v = trim(m.get(key));
  if (v.size() < 2 || v.front() != '[' || v.back() != ']')
    throw_bad_value(m, key, "expected a list like [32, 64], got '" + v + "'");
  std::vector<long> out;
  std::stringstream ss(v.substr(1, v.size() - 2));
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    if (item.empty()) continue;
    try {
      size_t used = 0;
      out.push_back(std::stol(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw_bad_value(m, key, "list item '" + item + "' is not an integer");
    }
  }
  return out;
}

std::string config_string(const ConfigMap& m, const std::string& key) { return m.get(key); }

std::string format_int_list(const std::vector<long>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

std::string format_exact_number(double value) {
  std::ostringstream s;
  s.precision(17);
  s << value;
  return s.str();
}

std::string nearest_word(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(3, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::vector<size_t> prev(c.size() + 1), cur(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= c.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word[i - 1] != c[j - 1])});
      std::swap(prev, cur);
    }
    if (prev[c.size()] < best_distance) {
      best_distance = prev[c.size()];
      best = c;
    }
  }
  return best;
}

void reject_unknown_keys(const ConfigMap& m, const std::vector<std::string>& known,
                         const std::string& what) {
  for (const auto& [k, v] : m.entries()) {
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    std::string msg = "unknown " + what + " key '" + k + "'";
    const std::string hint = nearest_word(k, known);
    if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
    throw_at_origin(m.origin(k).empty() ? k : m.origin(k), msg);
  }
}

std::vector<std::string> config_list_items(const std::string& text) {
  std::string t = text;
  if (!t.empty() && t.front() == '[') t = t.substr(1);
  if (!t.empty() && t.back() == ']') t.pop_back();
  std::vector<std::string> out;
  std::stringstream ss(t);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t\"'");
    const auto e = item.find_last_not_of(" \t\"'");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

}  // namespace iris
