// YAML reading for ConfigMap (built only with yaml-cpp).
#include <yaml-cpp/yaml.h>

#include "iris/common/config_map.h"
#include "iris/common/error.h"

namespace iris {
namespace {

void flatten(const YAML::Node& node, const std::string& prefix, const std::string& origin,
             ConfigMap& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      flatten(kv.second, prefix.empty() ? key : prefix + "." + key, origin, out);
    }
  } else if (node.IsSequence()) {
    std::string text = "[";
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

ConfigMap ConfigMap::load_yaml_file(const std::string& path) {
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
  flatten(root, "", path, m);
  return m;
}

}  // namespace iris
