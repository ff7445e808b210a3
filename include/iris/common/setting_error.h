#pragma once
// Errors that name the caller's settings (fields of infer::TaskSpec,
// infer::SegmenterOptions, infer::PlanOptions, a pipeline's options), never a
// program's flags. SettingError: a setting is missing, malformed or in
// conflict, and where() is its name (the field's). InputError: a file cannot
// be used as it is. Either reason may name settings with setting_ref(name).
// Each program shows a setting as its own flag (apps/common: name_settings
// installs setting_namer); without one, what() gives the settings' names:
//   throw SettingError("pool_dir", "only with " + setting_ref("strategy") + " retrieval");
//   what():     "pool_dir: only with strategy retrieval"
//   iris-infer: "usage error: --pool: only with --strategy retrieval"
#include <functional>
#include <string>

#include "iris/common/error.h"

namespace iris {

// A setting named inside an error's reason, marked so that no text of a
// path or value (which may hold braces or words) is ever taken for one.
inline std::string setting_ref(const std::string& name) { return '\x01' + name + '\x02'; }

// How this process names settings: a program installs its flags once at
// start (apps/common: name_settings), so that every message, also one kept
// in a report or a warning, reads as the user gave the setting. Unset (a
// library caller): the settings' own names.
using SettingNamer = std::function<std::string(const std::string&)>;
inline SettingNamer& setting_namer() {
  static SettingNamer namer;
  return namer;
}
// `name` as this process names it (setting_namer), e.g. in a warning.
inline std::string setting_name(const std::string& name) { return setting_namer() ? setting_namer()(name) : name; }

// An Error whose reason names settings (setting_ref); what() gives them as
// this process names them (setting_namer).
class SettingsNamingError : public Error {
 public:
  // The reason with each setting_ref(name) written as name_of(name).
  std::string reason_naming(const SettingNamer& name_of) const { return fill(template_, name_of); }
  // True when where() is a setting (a usage error), false when it is a file.
  bool about_setting() const noexcept { return about_setting_; }

  // `text` with each setting_ref(name) written as name_of(name), or as the
  // bare name when name_of is empty.
  static std::string fill(const std::string& text, const SettingNamer& name_of) {
    std::string out;
    size_t i = 0;
    while (i < text.size()) {
      const size_t open = text.find('\x01', i);
      const size_t close = open == std::string::npos ? std::string::npos : text.find('\x02', open);
      if (close == std::string::npos) {
        out += text.substr(i);
        break;
      }
      const std::string name = text.substr(open + 1, close - open - 1);
      out += text.substr(i, open - i);
      out += name_of ? name_of(name) : name;
      i = close + 1;
    }
    return out;
  }

 protected:
  // what() and where() name settings as this process does (setting_namer).
  SettingsNamingError(const std::string& where, const std::string& reason, bool about_setting)
      : Error(about_setting ? setting_name(where) : where, fill(reason, setting_namer())),
        subject_(where),
        template_(reason),
        about_setting_(about_setting) {}

  std::string subject_;  // the setting's own name, or the file

 private:
  std::string template_;
  bool about_setting_;
};

// A setting that is missing, malformed or in conflict: setting() is its own
// name, where() its name in this process (a program's flag).
class SettingError : public SettingsNamingError {
 public:
  SettingError(const std::string& setting, const std::string& reason) : SettingsNamingError(setting, reason, true) {}
  const std::string& setting() const noexcept { return subject_; }
};

// A file that cannot be used as it is, with a reason that may tell which
// setting would change that: InputError(path, "give " + setting_ref("preprocess") + " none").
class InputError : public SettingsNamingError {
 public:
  InputError(const std::string& file, const std::string& reason) : SettingsNamingError(file, reason, false) {}
};

// Where a configuration value came from (ConfigMap::origin): a file, or a
// setting written "{name}" (ConfigMap::apply_override gives "{overrides}").
inline bool origin_is_setting(const std::string& origin) {
  return origin.size() > 2 && origin.front() == '{' && origin.back() == '}';
}
// The error about a value from `origin` (or about an argument that a caller
// names so, as resolve_device's `where`): a SettingError naming the setting,
// or an Error naming the file or key.
[[noreturn]] inline void throw_at_origin(const std::string& origin, const std::string& reason) {
  if (origin_is_setting(origin)) throw SettingError(origin.substr(1, origin.size() - 2), reason);
  throw Error(origin, reason);
}

class ConfigMap;
// A bad value of `key` in `m`, named with where it came from
// (config_map.cpp): "FILE: key: reason", or a SettingError for {overrides}.
[[noreturn]] void throw_bad_value(const ConfigMap& m, const std::string& key, const std::string& reason);

}  // namespace iris
