#pragma once
// Writes that never leave a partial file behind: write to a temporary name in
// the destination folder, then rename over the destination.
#include <functional>
#include <string>

namespace iris {

// Calls write(tmp_path) and renames tmp_path to final_path on success. On any
// exception the temporary file is removed and the exception propagates.
// `suffix_hint` keeps the extension at the end of the temporary name so that
// writers choosing a format by extension (ITK, NIfTI .gz) still work.
void write_atomically(const std::string& final_path,
                      const std::function<void(const std::string& tmp_path)>& write);

// The extension of a path including compound ones: ".nii.gz", ".mha", "".
std::string full_extension(const std::string& path);

}  // namespace iris
