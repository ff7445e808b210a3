#include "iris/common/file_names.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>

#include "iris/common/error.h"

namespace fs = std::filesystem;

namespace iris {

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> known{".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"};
  return known;
}

std::string image_extension(const std::string& path) {
  std::string name = fs::path(path).filename().string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& ext : image_extensions())
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0) return ext;
  return "";
}

bool has_image_extension(const std::string& path) { return !image_extension(path).empty(); }

std::string case_name(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  const std::string ext = image_extension(path);
  return ext.empty() ? fs::path(name).stem().string() : name.substr(0, name.size() - ext.size());
}

namespace {

bool unsafe_char(unsigned char c) { return c < 0x20 || c == 0x7f || c == '/' || c == '\\'; }

}  // namespace

bool is_safe_path_component(const std::string& name) {
  if (name.empty() || name.size() > 200 || name == "." || name == "..") return false;
  return std::none_of(name.begin(), name.end(), [](char c) { return unsafe_char(static_cast<unsigned char>(c)); });
}

std::string safe_path_component(const std::string& name) {
  if (is_safe_path_component(name) && name.front() != '.') return name;
  std::string safe;
  for (char c : name.substr(0, 160)) safe += unsafe_char(static_cast<unsigned char>(c)) ? '_' : c;
  for (char& c : safe) {
    if (c != '.') break;
    c = '_';
  }
  uint32_t hash = 2166136261u;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 16777619u;
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "~%08x", hash);
  return safe + suffix;
}

bool lies_inside(const std::string& folder, const std::string& path) {
  std::error_code ec;
  const fs::path f = fs::weakly_canonical(fs::absolute(folder), ec);
  if (ec) return false;
  const fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
  if (ec) return false;
  auto fi = f.begin(), pi = p.begin();
  for (; fi != f.end(); ++fi, ++pi) {
    if (fi->empty() && std::next(fi) == f.end()) break;  // a trailing separator
    if (pi == p.end() || *fi != *pi) return false;
  }
  return true;
}

long parse_label_key(const std::string& key, const std::string& where) {
  const bool digits = !key.empty() && key.size() <= 5 &&
                      std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); });
  const long value = digits ? std::stol(key) : -1;
  if (value < 0 || value > 65535)
    throw Error(where, "label key '" + key + "' is not a label value (a whole number from 0 to 65535)");
  return value;
}

}  // namespace iris
