#pragma once
// One writer per folder: a run that writes into a folder (iris-train's
// output_dir) holds an exclusive lock on FOLDER/.iris.lock for its whole
// life. A second run into the same folder is refused at once, naming the
// process that holds it; the lock ends with the process, however it ends
// (kill -9 included), so no stale lock needs clearing.
#include <string>

namespace iris {

class FolderLock {
 public:
  // Takes the lock, or throws iris::Error naming `folder`, the holder's
  // process id and host, and `what` (the setting that named the folder).
  FolderLock(const std::string& folder, const std::string& what);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace iris
