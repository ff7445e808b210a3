#pragma once
// Writes that are checked, durable and atomic: nothing ever sits under the
// final name unless the whole file was written, flushed to the disk (fsync of
// the file, then of its folder) and renamed into place. A failed write (disk
// full, I/O error, an exception from the writer) removes the temporary file
// and throws iris::Error naming the final path and, for a full disk, how much
// room was needed and how much is free.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace iris {

// A file opened for writing; every write and the final close are checked.
// Made by write_file_atomically: callers only write into it.
class OutputFile {
 public:
  // `display_path` is the name errors mention (the final path, not the
  // temporary one); `expected_bytes` (0 = unknown) sizes the "needed" figure
  // of a disk-full message.
  OutputFile(const std::string& path, std::string display_path, uint64_t expected_bytes = 0);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  uint64_t bytes_written() const { return written_; }
  // fsync and close; throws on any error. Called by write_file_atomically.
  void finish();

 private:
  int fd_ = -1;
  std::string display_path_;
  uint64_t expected_ = 0, written_ = 0;
};

// Throws the iris::Error for a failed write of `display_path` with errno `err`
// ("no space left on the device (needed about N MB, M MB free)" for ENOSPC
// and EDQUOT). `folder` is where the free space is measured.
[[noreturn]] void throw_write_error(const std::string& display_path, int err, uint64_t needed_bytes);

// Calls write(tmp_path) for a temporary file in the destination folder whose
// name ends with the final path's extension (so writers that pick a format by
// extension, such as ITK's, still work), checks that it produced a non-empty
// regular file, fsyncs it, renames it over `final_path` and fsyncs the folder.
// A `final_path` that is a symbolic link is written through: its target is
// replaced, the link stays.
// On any exception the temporary file is removed and the exception
// propagates (std::filesystem errors become iris::Error naming final_path).
void write_atomically(const std::string& final_path,
                      const std::function<void(const std::string& tmp_path)>& write);

// The same for writers that write bytes: every write goes through `file`,
// checked as it happens.
void write_file_atomically(const std::string& final_path, const std::function<void(OutputFile& file)>& write,
                           uint64_t expected_bytes = 0);

// A whole text file (reports, JSON, CSV, configs), atomically and durably.
void write_text_file(const std::string& final_path, const std::string& text);

// Appends `text` to a log file (created if missing), every byte checked; a
// full disk is an iris::Error naming the file.
void append_text_file(const std::string& path, const std::string& text);

// Signal handling for programs that write: SIGXFSZ is ignored (the write
// then fails with a message), and SIGINT, SIGTERM, SIGHUP and SIGQUIT first
// remove the temporary files being written, then end the process as the
// signal would. Programs install it once at start (app::run_main); a handler
// installed later (the trainer's SIGTERM) takes precedence.
void install_write_signal_handlers();

// Temporary files write_atomically leaves only when the process is killed
// mid-write: ".NAME.tmpPID_N.EXT" in `folder`. Removes those whose process is
// no longer running (or all of them when `all` is set) and returns how many.
// `min_age_seconds` > 0 also spares files changed more recently: in a folder
// that processes on other machines write into (SLURM array tasks), a process
// id says nothing, but a file nobody has written to for that long is dead.
int remove_stale_temporaries(const std::string& folder, bool all = false, long min_age_seconds = 0);

// The extension of a path including compound ones: ".nii.gz", ".mha", "".
std::string full_extension(const std::string& path);

}  // namespace iris
