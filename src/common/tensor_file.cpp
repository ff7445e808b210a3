#include "iris/common/tensor_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "iris/common/atomic_file.h"
#include "iris/common/crc32.h"
#include "iris/common/error.h"
#include "iris/common/json.h"

namespace iris {

namespace {

constexpr const char* kChecksumKey = "iris.checksum";
constexpr const char* kFormatKey = "format";
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the safetensors limit

bool little_endian_host() {
  const uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {{at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"},
                                 {at::kBFloat16, "BF16"}, {at::kLong, "I64"}, {at::kInt, "I32"},
                                 {at::kShort, "I16"},     {at::kChar, "I8"},  {at::kByte, "U8"},
                                 {at::kBool, "BOOL"}};

const char* dtype_name(at::ScalarType t, const std::string& where) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw Error(where, std::string("cannot store tensors of dtype ") + c10::toString(t));
}

std::optional<at::ScalarType> dtype_of(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

struct Entry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;
};

std::string canonical_text(const std::map<std::string, std::string>& metadata, std::vector<Entry> entries) {
  std::string text;
  for (const auto& [k, v] : metadata) {
    if (k == kChecksumKey) continue;
    text += k;
    text += '\0';
    text += v;
    text += '\0';
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  for (const auto& e : entries) {
    text += e.name;
    text += '\0';
    text += e.dtype;
    text += '\0';
    for (size_t i = 0; i < e.shape.size(); ++i) text += (i ? "," : "") + std::to_string(e.shape[i]);
    text += '\0';
    text += std::to_string(e.begin) + "," + std::to_string(e.end);
    text += '\0';
  }
  return text;
}

std::string hex32(uint32_t v) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", v);
  return text;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `bytes` at `offset` or throws naming the file.
void read_at(int fd, void* out, uint64_t bytes, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(out);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, p, std::min<uint64_t>(bytes, uint64_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(path, std::string("cannot read: ") + std::strerror(errno));
    }
    if (n == 0) throw Error(path, "is damaged: the file ends early (truncated?)");
    p += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
}

}  // namespace

// ------------------------------------------------------------------ contents

void TensorFile::put(const std::string& name, const at::Tensor& tensor) {
  if (name.empty() || name == "__metadata__") throw Error(name, "is not a valid tensor name");
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const auto it = index_.find(name);
  if (it != index_.end()) {
    tensors_[it->second].second = t;
    return;
  }
  index_[name] = tensors_.size();
  tensors_.emplace_back(name, t);
}

bool TensorFile::has(const std::string& name) const { return index_.count(name) > 0; }

const at::Tensor& TensorFile::get(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end())
    throw Error(source_.empty() ? format_ : source_, "is damaged or incomplete: tensor '" + name + "' is missing");
  return tensors_[it->second].second;
}

const at::Tensor& TensorFile::get(const std::string& name, at::ScalarType dtype, at::IntArrayRef shape) const {
  const at::Tensor& t = get(name);
  if (t.scalar_type() != dtype || t.sizes() != shape)
    throw Error(source_.empty() ? format_ : source_,
                "is damaged or was made by another model: tensor '" + name + "' is " +
                    c10::toString(t.scalar_type()) + " " + c10::str(t.sizes()) + ", expected " +
                    c10::toString(dtype) + " " + c10::str(shape));
  return t;
}

void TensorFile::set(const std::string& key, const std::string& value) {
  if (key == kChecksumKey || key == kFormatKey) throw Error(key, "is a reserved metadata key");
  metadata_[key] = value;
}

void TensorFile::set_int(const std::string& key, int64_t value) { set(key, std::to_string(value)); }

void TensorFile::set_strings(const std::string& key, const std::vector<std::string>& values) {
  set(key, nlohmann::json(values).dump());
}

const std::string& TensorFile::meta(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end())
    throw Error(source_.empty() ? format_ : source_, "is damaged or incomplete: metadata '" + key + "' is missing");
  return it->second;
}

std::string TensorFile::meta_or(const std::string& key, const std::string& fallback) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? fallback : it->second;
}

int64_t TensorFile::meta_int(const std::string& key, int64_t min, int64_t max) const {
  const std::string& text = meta(key);
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || end != text.c_str() + text.size() || v < min || v > max)
    throw Error(source_.empty() ? format_ : source_, "is damaged: metadata '" + key + "' is '" + text +
                                                        "', expected an integer in [" + std::to_string(min) + ", " +
                                                        std::to_string(max) + "]");
  return v;
}

std::vector<std::string> TensorFile::meta_strings(const std::string& key, size_t max_count) const {
  const std::string& text = meta(key);
  const std::string where = source_.empty() ? format_ : source_;
  nlohmann::json j;
  try {
    j = parse_json(text, where);
  } catch (const Error&) {
    throw Error(where, "is damaged: metadata '" + key + "' is not a JSON list of strings");
  }
  if (!j.is_array() || j.size() > max_count)
    throw Error(where, "is damaged: metadata '" + key + "' is not a list of at most " + std::to_string(max_count) +
                           " strings");
  std::vector<std::string> out;
  for (const auto& v : j) {
    if (!v.is_string()) throw Error(where, "is damaged: metadata '" + key + "' holds a value that is not a string");
    out.push_back(v.get<std::string>());
  }
  return out;
}

// ------------------------------------------------------------------ writing

void TensorFile::save(const std::string& path) const {
  if (!little_endian_host()) throw Error(path, "iris files are little-endian; this machine is not");
  if (format_.empty()) throw Error(path, "a tensor file needs a format tag");
  std::map<std::string, std::string> metadata = metadata_;
  metadata[kFormatKey] = format_;
  std::vector<Entry> entries;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors_) {
    Entry e;
    e.name = name;
    e.dtype = dtype_name(t.scalar_type(), path);
    e.shape = t.sizes().vec();
    e.begin = offset;
    offset += static_cast<int64_t>(t.nbytes());
    e.end = offset;
    entries.push_back(std::move(e));
  }
  uint32_t crc = 0;
  {
    const std::string text = canonical_text(metadata, entries);
    crc = crc32_update(crc, text.data(), text.size());
    for (const auto& [name, t] : tensors_) crc = crc32_update(crc, t.data_ptr(), t.nbytes());
  }
  metadata[kChecksumKey] = "crc32:" + hex32(crc);

  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = metadata;
  for (const auto& e : entries)
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // 8-byte alignment, as the Python writer pads
  const uint64_t n = text.size();
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(n >> (8 * i));
  write_file_atomically(
      path,
      [&](OutputFile& f) {
        f.write(length, 8);
        f.write(text);
        for (const auto& [name, t] : tensors_) f.write(t.data_ptr(), t.nbytes());
      },
      8 + n + static_cast<uint64_t>(offset));
}

// ------------------------------------------------------------------ reading

bool TensorFile::looks_like(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) return false;
  unsigned char head[9];
  if (::pread(f.fd, head, 9, 0) != 9) return false;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
  return n >= 2 && n <= kMaxHeaderBytes && head[8] == '{';
}

TensorFile TensorFile::load(const std::string& path, const std::string& expected_format, const std::string& what) {
  if (!little_endian_host()) throw Error(path, "iris files are little-endian; this machine is not");
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) {
    if (errno == ENOENT) throw Error(path, "file not found");
    throw Error(path, std::string("cannot open: ") + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) throw Error(path, "is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  unsigned char head[8] = {0};
  if (size >= 4) {
    read_at(f.fd, head, std::min<uint64_t>(8, size), 0, path);
    if (head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4)
      throw Error(path, "is an " + what + " in iris' first format (a TorchScript archive, which can run code when "
                        "opened): convert it once, if you trust where it came from, with "
                        "iris-import --trust-legacy " + path + " --output NEW");
  }
  if (size < 8 + 2) throw Error(path, "is not an " + what + " (" + std::to_string(size) + " bytes, too short)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
  if (n < 2 || n > kMaxHeaderBytes || n > size - 8)
    throw Error(path, "is not an " + what + " or is damaged: its header length (" + std::to_string(n) +
                          " bytes) does not fit the file (" + std::to_string(size) + " bytes)");
  std::string text(n, '\0');
  read_at(f.fd, text.data(), n, 8, path);
  if (text[0] != '{') throw Error(path, "is not an " + what + " (no safetensors header)");
  nlohmann::json header;
  try {
    header = parse_json(text, path);
  } catch (const Error& e) {
    throw Error(path, "is damaged: its header " +
                          std::string(e.reason().rfind("the key", 0) == 0 ? "repeats a key (" + e.reason() + ")"
                                                                           : "is not valid JSON"));
  }
  if (!header.is_object()) throw Error(path, "is damaged: its header is not a JSON object");

  TensorFile out;
  out.source_ = path;
  std::vector<Entry> entries;
  const uint64_t data_bytes = size - 8 - n;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw Error(path, "is damaged: __metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) throw Error(path, "is damaged: metadata '" + mk + "' is not a string");
        out.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const auto bad = [&](const std::string& why) { return Error(path, "is damaged: tensor '" + key + "' " + why); };
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      throw bad("has no dtype, shape and data_offsets");
    Entry e;
    e.name = key;
    if (!value["dtype"].is_string() || !dtype_of(value["dtype"].get<std::string>()))
      throw bad("has an unknown dtype");
    e.dtype = value["dtype"].get<std::string>();
    const auto& shape = value["shape"];
    if (!shape.is_array() || shape.size() > 16) throw bad("has an invalid shape");
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad("has an invalid shape");
      const uint64_t dim = static_cast<uint64_t>(d.get<int64_t>());
      if (dim != 0 && numel > data_bytes / dim) throw bad("is larger than the file");
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_integer() || !off[1].is_number_integer())
      throw bad("has invalid data_offsets");
    e.begin = off[0].get<int64_t>();
    e.end = off[1].get<int64_t>();
    const uint64_t item = at::elementSize(*dtype_of(e.dtype));
    if (e.begin < 0 || e.end < e.begin || static_cast<uint64_t>(e.end) > data_bytes)
      throw bad("lies outside the file (offsets " + std::to_string(e.begin) + ".." + std::to_string(e.end) +
                ", " + std::to_string(data_bytes) + " data bytes)");
    if (static_cast<uint64_t>(e.end - e.begin) != numel * item)
      throw bad("has " + std::to_string(e.end - e.begin) + " bytes but its shape needs " +
                std::to_string(numel * item));
    entries.push_back(std::move(e));
  }
  // Tensors must tile the data section exactly: no holes, no overlaps, no tail.
  std::vector<Entry> by_offset = entries;
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  int64_t expected = 0;
  for (const auto& e : by_offset) {
    if (e.begin != expected)
      throw Error(path, "is damaged: tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) +
                            " of the data, expected " + std::to_string(expected) + " (hole or overlap)");
    expected = e.end;
  }
  if (static_cast<uint64_t>(expected) != data_bytes)
    throw Error(path, "is damaged: " + std::to_string(data_bytes - static_cast<uint64_t>(expected)) +
                          " bytes after the last tensor (or the file was cut or appended to)");

  const auto format = out.metadata_.find(kFormatKey);
  out.format_ = format == out.metadata_.end() ? "" : format->second;
  if (!expected_format.empty() && out.format_ != expected_format) {
    std::string found = out.format_.empty() ? "no iris format tag" : "format '" + out.format_ + "'";
    throw Error(path, "is not an " + what + " (" + found + ", expected '" + expected_format + "')");
  }
  const auto stored = out.metadata_.find(kChecksumKey);
  if (stored == out.metadata_.end()) throw Error(path, "has no iris checksum: it was not written by iris");

  uint32_t crc = 0;
  {
    const std::string canon = canonical_text(out.metadata_, entries);
    crc = crc32_update(crc, canon.data(), canon.size());
  }
  const uint64_t data_start = 8 + n;
  std::vector<std::pair<std::string, at::Tensor>> loaded(entries.size());
  std::map<std::string, size_t> position;
  for (size_t i = 0; i < entries.size(); ++i) position[entries[i].name] = i;
  for (const auto& e : by_offset) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(*dtype_of(e.dtype)));
    const uint64_t bytes = static_cast<uint64_t>(e.end - e.begin);
    if (bytes > 0) {
      read_at(f.fd, t.data_ptr(), bytes, data_start + static_cast<uint64_t>(e.begin), path);
      crc = crc32_update(crc, t.data_ptr(), bytes);
    }
    loaded[position[e.name]] = {e.name, t};
  }
  if (stored->second != "crc32:" + hex32(crc))
    throw Error(path, "is damaged: its checksum does not match its contents (stored " + stored->second +
                          ", computed crc32:" + hex32(crc) + "); the file changed after iris wrote it");
  // The checksum holds for a file written with NaN weights (or recomputed
  // after an edit): a model, task or checkpoint with a non-finite value would
  // give empty masks without a word, so it is refused here.
  for (const auto& [name, t] : loaded)
    if (at::isFloatingType(t.scalar_type()) && t.numel() > 0 && !at::isfinite(t).all().item<bool>()) {
      const long bad = (~at::isfinite(t)).sum().item<long>();
      throw Error(path, "is unusable: tensor '" + name + "' holds " + std::to_string(bad) +
                            " NaN or infinite value(s) (a diverged training or a damaged file)");
    }
  out.metadata_.erase(kFormatKey);
  out.metadata_.erase(kChecksumKey);
  for (auto& [name, t] : loaded) {
    out.index_[name] = out.tensors_.size();
    out.tensors_.emplace_back(name, std::move(t));
  }
  return out;
}

}  // namespace iris
