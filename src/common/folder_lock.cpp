#include "iris/common/folder_lock.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "iris/common/error.h"
#include "iris/common/log.h"

namespace iris {

FolderLock::FolderLock(const std::string& folder, const std::string& what) {
  const std::string path = (std::filesystem::path(folder) / ".iris.lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(path, std::string("cannot create the lock file: ") + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[256] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    fd_ = -1;
    std::string who(holder, n > 0 ? static_cast<size_t>(n) : 0);
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    if (err == EWOULDBLOCK)
      throw Error(folder, "is in use by another run (" + (who.empty() ? std::string("process unknown") : who) +
                              "): wait for it to end, or give " + what + " another folder");
    if (err == ENOSYS || err == EOPNOTSUPP || err == ENOLCK || err == EINVAL) {
      // A file system without flock (Lustre mounted noflock, some FUSE ones):
      // run unguarded rather than not at all, and say so.
      log::warn(folder + ": this file system cannot lock files (" + std::strerror(err) +
                "); nothing stops a second run from writing into it too");
      return;
    }
    throw Error(path, std::string("cannot lock: ") + std::strerror(err));
  }
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string me = "process " + std::to_string(::getpid()) + " on " + host + "\n";
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) < 0) {
    // The lock holds without the note; only the message of a refused run is poorer.
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

}  // namespace iris
