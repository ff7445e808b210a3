#include "iris/common/file_names.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

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

}  // namespace iris
