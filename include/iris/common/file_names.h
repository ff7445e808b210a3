#pragma once
// How iris names things on disk, one rule each: which files are images, and
// the case name of an image file (the file name without its image extension).
#include <string>
#include <vector>

namespace iris {

// The file extensions iris reads images from, lower case, longest first
// (".nii.gz" before ".nii").
const std::vector<std::string> &image_extensions();

// The image extension `path` ends with (case-insensitive), or "".
std::string image_extension(const std::string& path);
bool has_image_extension(const std::string& path);

// "ct_001.nii.gz" -> "ct_001"; a file without an image extension keeps its
// name less its last extension.
std::string case_name(const std::string& path);

}  // namespace iris
