#pragma once
// Configuration as an ordered map of dotted keys to scalar or list text, so
// that YAML files, files embedded in model files and `--set key=value` CLI
// overrides all layer the same way (later layers override earlier ones), as
// Marian does. Typed structs read from it and reject keys they do not know.
#include <map>
#include <string>
#include <vector>

namespace iris {

class ConfigMap {
 public:
  // Sets `key` (dotted, e.g. "model.channels") to `value` ("3", "[32, 64]", "true").
  void set(const std::string& key, const std::string& value, const std::string& origin = "");
  bool has(const std::string& key) const;
  const std::string& get(const std::string& key) const;
  // Where the value came from, for messages: a file ("configs/x.yaml"), or
  // a setting written "{name}" (apply_override: "{overrides}";
  // iris/common/setting_error.h: throw_at_origin).
  const std::string& origin(const std::string& key) const;
  const std::map<std::string, std::string>& entries() const { return values_; }

  // Applies `other` on top of this one.
  void merge(const ConfigMap& other);
  // Keys under `prefix.` with the prefix removed.
  ConfigMap subtree(const std::string& prefix) const;

  // Flat "key: value" lines (a YAML subset); parse_text reads the same back.
  std::string to_text() const;
  static ConfigMap parse_text(const std::string& text, const std::string& origin);
  // "key=value" as given on a command line.
  void apply_override(const std::string& assignment);

  // The block-mapping subset of YAML iris configs use (nested maps by
  // indentation, scalars, [a, b] lists, one-level {k: v} maps), for builds
  // without yaml-cpp.
  static ConfigMap parse_yaml_subset(const std::string& text, const std::string& origin);

  // Reads a YAML config file, flattening nested maps into dotted keys
  // (yaml-cpp where built in; without it, the subset of parse_yaml_subset).
  // A top-level `include: base.yaml` or `include: [a.yaml, b.yaml]` (paths
  // relative to the including file) loads those files first, in order, each
  // with its own includes; the file's own keys then override theirs, so a
  // config can be "that one, plus or minus a few keys". A loop of includes, a
  // missing included file or a non-string include is refused, naming the
  // chain. Each key keeps the file it came from as its origin.
  static ConfigMap load_yaml_file(const std::string& path);
  // One file as written, its `include` key left as a plain value.
  static ConfigMap read_yaml_file(const std::string& path);

  void erase(const std::string& key);

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> origins_;
};

// The one rule of --config FILE and --set KEY=VALUE in every program that reads
// a few sections of a config (iris-import: model and preprocess; iris-bench:
// model; iris-preprocess: preprocess). A key is written as in a full config,
// section first (model.head_dim=16, preprocess.spacing=1), as iris-train's
// --set takes it; a bare key belongs to the first of `sections`. The file is a
// full config, whose other sections are not read (a training config may be
// given), or, when it has none of `sections`, the keys of the first one alone.
// Returns each section's keys, the overrides on top (origin "{overrides}"); a
// dotted --set key of a section not read here is refused, as is a file that
// mixes section-less keys with sections.
std::map<std::string, ConfigMap> read_config_sections(const std::string& path,
                                                      const std::vector<std::string>& overrides,
                                                      const std::vector<std::string>& sections);

// Typed readers that name the key and its origin in their errors.
long config_int(const ConfigMap& m, const std::string& key);
double config_double(const ConfigMap& m, const std::string& key);
bool config_bool(const ConfigMap& m, const std::string& key);
std::vector<long> config_int_list(const ConfigMap& m, const std::string& key);
std::string config_string(const ConfigMap& m, const std::string& key);

// Throws iris::Error for keys of `m` not in `known`, suggesting the nearest
// known key ("did you mean 'channels'?").
void reject_unknown_keys(const ConfigMap& m, const std::vector<std::string>& known,
                         const std::string& what);

// The closest of `candidates` to `word` by edit distance, or "" if none is close.
std::string nearest_word(const std::string& word, const std::vector<std::string>& candidates);

std::string format_int_list(const std::vector<long>& values);
// A number as config text that reads back to the same double (17 digits).
std::string format_exact_number(double value);

// The items of a list value as configs write it: "[a, 'b', \"c d\"]" (or
// without brackets) -> {"a", "b", "c d"}; quotes and blanks around items
// are dropped, empty items too.
std::vector<std::string> config_list_items(const std::string& text);

}  // namespace iris
