#pragma once
// The one file format for everything iris writes and people exchange (model
// files, stored tasks, pool features, training checkpoints): safetensors.
// A file is data, never code:
//
//   u64 little-endian N | N bytes of JSON header | raw little-endian tensor bytes
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets"} and
// holds string metadata under "__metadata__" (format tag, configs, names,
// counters). Any safetensors reader (the Python `safetensors` package,
// Hugging Face tools) reads these files; docs/cli.md#files says what each
// iris file holds.
//
// Reading checks every size and offset against the file before it allocates
// anything, refuses holes, overlaps, unknown dtypes and trailing bytes, and
// verifies `iris.checksum`, "crc32:xxxxxxxx": the CRC-32 (zlib's) of a
// canonical header text followed by the tensor bytes as stored, so flipped or
// cut bytes anywhere are reported as damage, naming the file. The canonical
// text: for each metadata key except iris.checksum, in byte order,
// "key\0value\0"; then for each tensor, in name order,
// "name\0DTYPE\0d0,d1,...\0begin,end\0". tests/common/read_safetensors.py
// recomputes it without iris.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

namespace iris {

class TensorFile {
 public:
  // What the file is (stored as metadata "format"), e.g. "iris-model-v2".
  explicit TensorFile(std::string format = "") : format_(std::move(format)) {}

  const std::string& format() const { return format_; }
  const std::string& source() const { return source_; }  // file read from ("" when made in memory)

  // ---- tensors (names unique; stored as contiguous CPU copies)
  void put(const std::string& name, const at::Tensor& tensor);
  bool has(const std::string& name) const;
  // The tensor, or iris::Error naming the file ("is damaged or incomplete:
  // tensor 'x' is missing").
  const at::Tensor& get(const std::string& name) const;
  // With dtype and shape checked: a mismatch is an iris::Error naming the file.
  const at::Tensor& get(const std::string& name, at::ScalarType dtype, at::IntArrayRef shape) const;
  const std::vector<std::pair<std::string, at::Tensor>>& tensors() const { return tensors_; }

  // ---- metadata (strings; numbers written as decimal text)
  void set(const std::string& key, const std::string& value);
  void set_int(const std::string& key, int64_t value);
  void set_strings(const std::string& key, const std::vector<std::string>& values);  // a JSON array
  bool has_meta(const std::string& key) const { return metadata_.count(key) > 0; }
  const std::string& meta(const std::string& key) const;  // iris::Error when missing
  std::string meta_or(const std::string& key, const std::string& fallback) const;
  // Parsed and range-checked: iris::Error naming the file on anything else.
  int64_t meta_int(const std::string& key, int64_t min, int64_t max) const;
  std::vector<std::string> meta_strings(const std::string& key, size_t max_count) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Writes atomically and durably (atomic_file.h) with the checksum.
  void save(const std::string& path) const;

  // Reads and checks `path`. `expected_format` must equal the stored format
  // ("" accepts any); `what` names the kind of file in messages ("iris model
  // file"). A zip/TorchScript file of iris' first format gets an error that
  // says how to convert it (iris-import --trust-legacy).
  static TensorFile load(const std::string& path, const std::string& expected_format, const std::string& what);

  // True when the file starts like a safetensors file (plausible header length, then '{').
  static bool looks_like(const std::string& path);

 private:
  std::string format_, source_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace iris
