#include "iris/common/atomic_file.h"

#include <atomic>
#include <filesystem>
#include <random>
#include <unistd.h>

#include "iris/common/error.h"

namespace fs = std::filesystem;

namespace iris {

std::string full_extension(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  static const char* compound[] = {".nii.gz", ".tar.gz"};
  for (const char* c : compound) {
    const std::string ext(c);
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0)
      return ext;
  }
  return fs::path(name).extension().string();
}

void write_atomically(const std::string& final_path,
                      const std::function<void(const std::string&)>& write) {
  const fs::path target(final_path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw Error(final_path, "output folder does not exist");
  static std::atomic<unsigned> counter{0};
  const std::string ext = full_extension(final_path);
  std::string stem = target.filename().string();
  stem = stem.substr(0, stem.size() - ext.size());
  const fs::path tmp = dir / ("." + stem + ".tmp" + std::to_string(::getpid()) + "_" +
                              std::to_string(counter++) + ext);
  try {
    write(tmp.string());
    fs::rename(tmp, target);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace iris
