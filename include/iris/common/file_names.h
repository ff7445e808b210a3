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

// A name read from a file (a DICOM UID, a CSV cell, a dataset's case name)
// as one path component. A safe name is returned as it is: not empty, not
// "." or "..", no '/', '\\', NUL or control character, at most 200 bytes.
// Anything else becomes a safe stand-in: those characters (and leading dots)
// replaced by '_', cut to 160 bytes, and "~" plus 8 hex digits of the
// original's hash appended so that two names never map to one. Callers say
// when a name was changed.
std::string safe_path_component(const std::string& name);
bool is_safe_path_component(const std::string& name);

// Whether `path` is `folder` itself or lies under it, after resolving "." and
// "..", and the symbolic links of the parts that exist.
bool lies_inside(const std::string& folder, const std::string& path);

// The label value a text key names ("3" in a dataset.json's "labels"):
// iris::Error naming `where` unless it is a whole number from 0 to 65535.
long parse_label_key(const std::string& key, const std::string& where);

}  // namespace iris
