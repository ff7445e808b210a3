#include "iris/common/shipped_data.h"

#include <filesystem>
#include <system_error>

namespace fs = std::filesystem;

namespace iris {

std::string shipped_path(const std::string& relative) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  const fs::path bin = ec ? fs::path() : exe.parent_path();
  const fs::path installed = bin.parent_path() / "share" / "iris" / relative;
  if (!bin.empty() && fs::exists(installed, ec)) return installed.string();
#if defined(IRIS_SOURCE_DIR) && defined(IRIS_BUILD_DIR)
  // A program of the build folder (apps, tests): the source tree's copy.
  const fs::path build = fs::weakly_canonical(IRIS_BUILD_DIR, ec);
  if (!bin.empty() && !ec && fs::weakly_canonical(bin, ec) == build) return (fs::path(IRIS_SOURCE_DIR) / relative).string();
#endif
  return bin.empty() ? relative : installed.string();
}

}  // namespace iris
