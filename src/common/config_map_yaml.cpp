// YAML reading for ConfigMap (built only with yaml-cpp).
#include <map>

#include <yaml-cpp/yaml.h>

#include "iris/common/config_map.h"
#include "iris/common/error.h"

namespace iris {
namespace {

// A configuration has dozens of settings, never this many: YAML aliases
// that expand into each other (a "billion laughs" file) are refused before
// they take gigabytes.
constexpr size_t kMaxSettings = 100000;
constexpr int kMaxDepth = 32;
// Nor this much text: an alias repeats a long value without growing the
// file (a 4 MB string aliased 2,000 times is 8 GB of settings).
constexpr size_t kMaxBytes = size_t(64) << 20;

struct Budget {
  size_t settings = 0, bytes = 0;
  void add_bytes(size_t n, const std::string& origin) {
    bytes += n;
    if (bytes > kMaxBytes)
      throw Error(origin, "holds more than " + std::to_string(kMaxBytes >> 20) +
                              " MB of settings (YAML aliases repeating a long value?)");
  }
};

void flatten(const YAML::Node& node, const std::string& prefix, const std::string& origin, ConfigMap& out,
             Budget& budget, int depth = 0) {
  size_t& visited = budget.settings;
  if (++visited > kMaxSettings || depth > kMaxDepth)
    throw Error(origin, "holds more than " + std::to_string(kMaxSettings) + " settings or nests deeper than " +
                            std::to_string(kMaxDepth) + " levels (YAML aliases expanding into each other?)");
  if (node.IsMap()) {
    std::map<std::string, int> line_of;
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      const int line = kv.first.Mark().line + 1;
      const std::string full = prefix.empty() ? key : prefix + "." + key;
      const auto seen = line_of.find(key);
      // yaml-cpp keeps both entries of a repeated key; the second would win silently.
      if (seen != line_of.end())
        throw Error(origin + ":" + std::to_string(line), "key '" + full + "' is set twice (lines " +
                                                             std::to_string(seen->second) + " and " +
                                                             std::to_string(line) + "); remove one");
      line_of[key] = line;
      flatten(kv.second, full, origin, out, budget, depth + 1);
    }
  } else if (node.IsSequence()) {
    std::string text = "[";
    if (node.size() > kMaxSettings) throw Error(origin + ": " + prefix, "a list of more than " + std::to_string(kMaxSettings) + " values");
    visited += node.size();
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar())
        throw Error(origin + ": " + prefix, "only lists of scalars are supported");
      const std::string value = node[i].as<std::string>();
      budget.add_bytes(value.size() + 2, origin);
      text += (i ? ", " : "") + value;
    }
    out.set(prefix, text + "]", origin);
  } else if (node.IsScalar()) {
    const std::string value = node.as<std::string>();
    budget.add_bytes(value.size() + prefix.size(), origin);
    out.set(prefix, value, origin);
  } else if (node.IsNull()) {
    out.set(prefix, "", origin);
  }
}

}  // namespace

ConfigMap ConfigMap::read_yaml_file(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw Error(path, "cannot open configuration file");
  } catch (const YAML::Exception& e) {
    throw Error(path, std::string("not valid YAML: ") + e.what());
  }
  ConfigMap m;
  if (root.IsNull()) return m;
  if (!root.IsMap()) throw Error(path, "a configuration file must be a YAML mapping");
  Budget budget;
  flatten(root, "", path, m, budget);
  return m;
}

}  // namespace iris
