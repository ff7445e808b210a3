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

void flatten(const YAML::Node& node, const std::string& prefix, const std::string& origin, ConfigMap& out,
             size_t& visited, int depth = 0) {
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
      flatten(kv.second, full, origin, out, visited, depth + 1);
    }
  } else if (node.IsSequence()) {
    std::string text = "[";
    if (node.size() > kMaxSettings) throw Error(origin + ": " + prefix, "a list of more than " + std::to_string(kMaxSettings) + " values");
    visited += node.size();
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar())
        throw Error(origin + ": " + prefix, "only lists of scalars are supported");
      text += (i ? ", " : "") + node[i].as<std::string>();
    }
    out.set(prefix, text + "]", origin);
  } else if (node.IsScalar()) {
    out.set(prefix, node.as<std::string>(), origin);
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
  size_t visited = 0;
  flatten(root, "", path, m, visited);
  return m;
}

}  // namespace iris
