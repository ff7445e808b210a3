#pragma once
// TensorBoard scalar logs with nothing beyond the standard library: TFRecord
// framing (masked CRC-32C) around hand-encoded `tensorflow.Event` protobufs,
// so `tensorboard --logdir OUTPUT` shows training curves without linking
// protobuf or TensorFlow. Also a small reader, for tests and summaries.
//
//   TensorBoardWriter tb(output_dir);          // creates the folder and file
//   tb.add_scalar("train/loss", loss, step);   // buffered; flushed every N
//                                              // records or seconds, and on
//                                              // destruction
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace iris::train {

// CRC-32C (Castagnoli). Pass a previous result as `crc` to continue it over
// more bytes: crc32c(b, nb, crc32c(a, na)) == crc32c(a+b, na+nb).
uint32_t crc32c(const void* data, std::size_t size, uint32_t crc = 0);
// TFRecord's masking of a CRC stored next to the data it covers.
uint32_t masked_crc32c(const void* data, std::size_t size);

class TensorBoardWriter {
 public:
  // Opens dir/events.out.tfevents.<unix seconds>.<hostname>.<pid>.iris (dir is
  // created) and writes the file-version event. Pending records are written
  // once `flush_every_records` are queued or `flush_every_seconds` have passed
  // since the last flush, checked at each add_scalar. Throws iris::Error
  // naming the file when it cannot be created or written.
  explicit TensorBoardWriter(const std::string& dir, std::size_t flush_every_records = 100,
                             double flush_every_seconds = 10.0);
  ~TensorBoardWriter();  // flushes; a failure there is reported on stderr
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event{wall_time = now, step, summary{value{tag, simple_value}}}.
  // TensorBoard stores scalars as float32, hence the narrowing.
  void add_scalar(const std::string& tag, double value, long step);
  // Writes pending records and flushes the OS-level stream.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void append_record(const std::string& event);

  std::string path_;
  std::FILE* file_ = nullptr;
  std::string pending_;  // framed records not yet written
  std::size_t pending_records_ = 0;
  std::size_t flush_every_records_;
  std::chrono::steady_clock::duration flush_every_;
  std::chrono::steady_clock::time_point last_flush_;
};

struct ScalarEvent {
  double wall_time = 0;
  long step = 0;
  std::string tag;
  float value = 0;
};

// Every simple_value scalar of an event file, in file order. Both CRCs of
// every record are checked; a bad CRC, a truncated record or a malformed
// event throws iris::Error naming the file and the record's byte offset.
std::vector<ScalarEvent> read_tensorboard_scalars(const std::string& file);

}  // namespace iris::train
