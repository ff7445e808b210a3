#include "iris/data/class_vocabulary.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "iris/common/config_map.h"
#include "iris/common/error.h"

namespace iris::data {

std::string ClassVocabulary::normalise(const std::string& name) {
  std::string out;
  for (char c : name) {
    const unsigned char u = static_cast<unsigned char>(c);
    char n = (c == ' ' || c == '-' || c == '.' || c == '_') ? '_' : static_cast<char>(std::tolower(u));
    if (n == '_' && (out.empty() || out.back() == '_')) continue;
    out += n;
  }
  while (!out.empty() && out.back() == '_') out.pop_back();
  return out;
}

ClassVocabulary ClassVocabulary::load(const std::string& path) {
  // load_yaml_file reads an `include:` first (another vocabulary to extend),
  // so `include` itself is not a class name.
  const ConfigMap m = ConfigMap::load_yaml_file(path);
  ClassVocabulary v;
  for (const auto& [canonical, synonyms] : m.entries()) {
    if (canonical.find('.') != std::string::npos)
      throw Error(path, "'" + canonical + "': write one canonical name per line with a list of synonyms");
    v.canonical_names_.push_back(canonical);
    std::vector<std::string> names = config_list_items(synonyms);
    names.push_back(canonical);
    for (const auto& s : names) {
      const std::string key = normalise(s);
      auto it = v.by_synonym_.find(key);
      if (it != v.by_synonym_.end() && it->second != canonical)
        throw Error(path, "synonym '" + s + "' is claimed by both '" + it->second + "' and '" + canonical + "'");
      v.by_synonym_[key] = canonical;
    }
  }
  if (v.canonical_names_.empty()) throw Error(path, "names no classes");
  return v;
}

std::string ClassVocabulary::canonical(const std::string& name) const {
  const auto it = by_synonym_.find(normalise(name));
  return it == by_synonym_.end() ? "" : it->second;
}

std::vector<std::string> ClassVocabulary::apply(std::vector<DatasetSpec>& datasets) const {
  std::set<std::string> unknown;
  for (auto& d : datasets) {
    std::map<std::string, long> taken;  // canonical name -> label value
    for (auto& [value, name] : d.class_names) {
      const std::string c = canonical(name);
      if (c.empty()) {
        unknown.insert(name);
        continue;
      }
      if (auto it = taken.find(c); it != taken.end())
        throw Error("data.datasets." + d.name, "labels " + std::to_string(it->second) + " and " + std::to_string(value) +
                                                   " both mean '" + c + "' in the class vocabulary");
      taken[c] = value;
      name = c;
    }
  }
  return {unknown.begin(), unknown.end()};
}

}  // namespace iris::data
