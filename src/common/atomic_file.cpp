#include "iris/common/atomic_file.h"

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <regex>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "iris/common/error.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

std::string megabytes(uint64_t bytes) {
  const double mb = static_cast<double>(bytes) / (1024.0 * 1024.0);
  char text[32];
  std::snprintf(text, sizeof text, mb < 10 ? "%.1f MB" : "%.0f MB", mb);
  return text;
}

fs::path folder_of(const std::string& path) {
  const fs::path p(path);
  return p.has_parent_path() ? p.parent_path() : fs::path(".");
}

void fsync_folder(const fs::path& folder, const std::string& display_path) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // some filesystems do not open folders; the rename stands
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // EINVAL: the filesystem cannot sync folders (it is then durable by design).
  if (rc != 0 && err != EINVAL && err != EROFS) throw_write_error(display_path, err, 0);
}

}  // namespace

void throw_write_error(const std::string& display_path, int err, uint64_t needed_bytes) {
  if (err == ENOSPC || err == EDQUOT) {
    std::string message = err == EDQUOT ? "disk quota exceeded" : "no space left on the device";
    struct statvfs s {};
    const bool have_free = ::statvfs(folder_of(display_path).c_str(), &s) == 0;
    std::string detail;
    if (needed_bytes > 0) detail += "needed about " + megabytes(needed_bytes);
    if (have_free)
      detail += (detail.empty() ? "" : ", ") +
                megabytes(static_cast<uint64_t>(s.f_bavail) * static_cast<uint64_t>(s.f_frsize)) + " free";
    if (!detail.empty()) message += " (" + detail + ")";
    throw Error(display_path, message + "; nothing was written");
  }
  throw Error(display_path, std::string("cannot write: ") + std::strerror(err) + "; nothing was written");
}

OutputFile::OutputFile(const std::string& path, std::string display_path, uint64_t expected_bytes)
    : display_path_(std::move(display_path)), expected_(expected_bytes) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_write_error(display_path_, errno, expected_);
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(const void* data, size_t bytes) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_write_error(display_path_, errno, std::max(expected_, written_ + bytes));
    }
    if (n == 0) throw_write_error(display_path_, ENOSPC, std::max(expected_, written_ + bytes));
    p += n;
    bytes -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void OutputFile::finish() {
  if (fd_ < 0) return;
  // Delayed allocation can report a full disk only here.
  if (::fsync(fd_) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw_write_error(display_path_, err, std::max(expected_, written_));
  }
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw_write_error(display_path_, errno, std::max(expected_, written_));
}

std::string full_extension(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  static const char* compound[] = {".nii.gz", ".tar.gz"};
  for (const char* c : compound) {
    const std::string ext(c);
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0) return ext;
  }
  return fs::path(name).extension().string();
}

namespace {

fs::path temporary_name(const std::string& final_path) {
  static std::atomic<unsigned> counter{0};
  const fs::path target(final_path);
  std::string ext = full_extension(final_path);
  std::string stem = target.filename().string();
  // A legal 255-byte name must not fail through its longer temporary name:
  // the stem is cut to 120 bytes, and an extension longer than any format's
  // (which no writer chooses a format by) is left off.
  stem = stem.substr(0, std::min<size_t>(stem.size() - ext.size(), 120));
  if (ext.size() > 32) ext.clear();
  return folder_of(final_path) /
         ("." + stem + ".tmp" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ext);
}

// The temporary files being written now, for the signal handler to remove:
// fixed slots of plain bytes, since a handler may not allocate or lock.
constexpr int kSlots = 64;
constexpr size_t kSlotBytes = 4096;
char g_temporaries[kSlots][kSlotBytes];
std::atomic<int> g_slot_used[kSlots];

int register_temporary(const fs::path& tmp) {
  const std::string path = fs::absolute(tmp).string();
  if (path.size() >= kSlotBytes) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (!g_slot_used[i].compare_exchange_strong(expected, 1)) continue;  // 1: being filled
    std::memcpy(g_temporaries[i], path.c_str(), path.size() + 1);
    g_slot_used[i].store(2);  // 2: a path the handler may remove
    return i;
  }
  return -1;
}

void unregister_temporary(int slot) {
  if (slot >= 0) g_slot_used[slot].store(0);
}

extern "C" void remove_temporaries_and_die(int signal_number) {
  for (int i = 0; i < kSlots; ++i)
    if (g_slot_used[i].load() == 2) ::unlink(g_temporaries[i]);
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

// Where a write to `final_path` lands: the target of a symbolic link (the
// link itself stays), else the path itself.
std::string write_target(const std::string& final_path) {
  std::error_code ec;
  if (!fs::is_symlink(final_path, ec)) return final_path;
  if (full_extension(final_path) == ".mhd")
    throw Error(final_path, "is a symbolic link: a MetaImage header and its .raw data are written side by side, so "
                            "give the real path (or write .mha, .nii.gz)");
  const fs::path target = fs::weakly_canonical(fs::absolute(final_path), ec);
  if (ec) throw Error(final_path, "is a symbolic link that cannot be followed: " + ec.message());
  if (fs::exists(target) && !fs::is_regular_file(target))
    throw Error(final_path, "is a symbolic link to " + target.string() + ", which is not a regular file");
  return target.string();
}

// fsync of a file another writer produced (ITK, DCMTK): a full disk that the
// writer did not notice shows up here or as an empty file.
void sync_written_file(const fs::path& tmp, const std::string& display_path) {
  struct stat st {};
  if (::stat(tmp.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(display_path, "the writer produced no file; nothing was written");
  if (st.st_size == 0) throw_write_error(display_path, ENOSPC, 0);  // the usual cause of an empty result
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_write_error(display_path, errno, 0);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw_write_error(display_path, err, static_cast<uint64_t>(st.st_size));
}

void commit(const fs::path& tmp, const std::string& final_path) {
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  if (ec) throw Error(final_path, "cannot move the finished file into place: " + ec.message());
  fsync_folder(folder_of(final_path), final_path);
}

template <typename Body>
void with_temporary(const std::string& final_path, Body&& body) {
  const std::string target = write_target(final_path);  // a link is written through, never replaced
  const fs::path dir = folder_of(target);
  if (!fs::is_directory(dir)) throw Error(final_path, "output folder does not exist");
  const fs::path tmp = temporary_name(target);
  const int slot = register_temporary(tmp);
  try {
    body(tmp);
    commit(tmp, target);
    unregister_temporary(slot);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    unregister_temporary(slot);
    if (e.code().value() == ENOSPC || e.code().value() == EDQUOT) throw_write_error(final_path, e.code().value(), 0);
    throw Error(final_path, std::string("cannot write: ") + e.code().message() + "; nothing was written");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    unregister_temporary(slot);
    throw;
  }
}

}  // namespace

void write_atomically(const std::string& final_path, const std::function<void(const std::string&)>& write) {
  with_temporary(final_path, [&](const fs::path& tmp) {
    write(tmp.string());
    sync_written_file(tmp, final_path);
  });
}

void write_file_atomically(const std::string& final_path, const std::function<void(OutputFile&)>& write,
                           uint64_t expected_bytes) {
  with_temporary(final_path, [&](const fs::path& tmp) {
    OutputFile file(tmp.string(), final_path, expected_bytes);
    write(file);
    file.finish();
  });
}

void write_text_file(const std::string& final_path, const std::string& text) {
  write_file_atomically(final_path, [&](OutputFile& f) { f.write(text); }, text.size());
}

void append_text_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw_write_error(path, errno, text.size());
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      ::close(fd);
      throw_write_error(path, err, text.size());
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw_write_error(path, errno, text.size());
}

void install_write_signal_handlers() {
  // A file-size limit (ulimit -f) makes write() fail with EFBIG, reported
  // like any failed write, instead of killing the process mid-file.
  ::signal(SIGXFSZ, SIG_IGN);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) {
    struct sigaction current {};
    ::sigaction(sig, nullptr, &current);
    if (current.sa_handler == SIG_IGN) continue;  // e.g. nohup: stay ignored
    struct sigaction action {};
    action.sa_handler = remove_temporaries_and_die;
    sigemptyset(&action.sa_mask);
    ::sigaction(sig, &action, nullptr);
  }
}

int remove_stale_temporaries(const std::string& folder, bool all, long min_age_seconds) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return 0;
  static const std::regex pattern(R"(^\..*\.tmp([0-9]+)_[0-9]+.*$)");
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    // Not one of ours when its "pid" has more digits than any pid can.
    if (!std::regex_match(name, m, pattern) || m[1].length() > 9) continue;
    const long pid = std::stol(m[1].str());
    const bool alive = !all && (pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
    if (alive) continue;
    if (min_age_seconds > 0) {
      std::error_code age;
      const auto changed = fs::last_write_time(entry.path(), age);
      if (age || fs::file_time_type::clock::now() - changed < std::chrono::seconds(min_age_seconds)) continue;
    }
    std::error_code rm;
    if (fs::remove_all(entry.path(), rm) > 0 && !rm) ++removed;
  }
  return removed;
}

}  // namespace iris
