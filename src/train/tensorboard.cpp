#include "iris/train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string_view>

#include "iris/common/error.h"
#include "iris/common/log.h"

namespace fs = std::filesystem;

namespace iris::train {

namespace {

// Byte-at-a-time table for the reflected Castagnoli polynomial; speed is not
// a concern at a few records per training step.
constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kCastagnoliReflected : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrcTable = make_crc_table();

// ---- little-endian and protobuf encoding -----------------------------------

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7Fu) | 0x80u));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (uint64_t{field} << 3) | type); }

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes.data(), bytes.size());
}

void put_double(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

// tensorflow.Event / Summary / Summary.Value field numbers.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// ---- decoding -------------------------------------------------------------

struct Malformed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

uint32_t get_le32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{p[i]} << (8 * i);
  return v;
}
uint64_t get_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// A protobuf message being read field by field.
struct Fields {
  const unsigned char* p;
  const unsigned char* end;

  bool done() const { return p == end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p == end) throw Malformed("a varint runs past the end of its message");
      const unsigned char b = *p++;
      v |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80u)) return v;
    }
    throw Malformed("a varint is longer than 10 bytes");
  }
  const unsigned char* take(uint64_t n) {
    if (n > static_cast<uint64_t>(end - p)) throw Malformed("a field runs past the end of its message");
    const unsigned char* start = p;
    p += n;
    return start;
  }
  // Reads a key; returns the field number and sets `type`.
  uint32_t key(uint32_t& type) {
    const uint64_t k = varint();
    type = static_cast<uint32_t>(k & 7u);
    if ((k >> 3) == 0 || (k >> 3) > 0x1FFFFFFFu) throw Malformed("invalid field number");
    return static_cast<uint32_t>(k >> 3);
  }
  Fields sub() {
    const uint64_t n = varint();
    const unsigned char* start = take(n);
    return {start, p};
  }
  void skip(uint32_t type) {
    switch (type) {
      case kVarint: varint(); break;
      case kFixed64: take(8); break;
      case kLengthDelimited: take(varint()); break;
      case kFixed32: take(4); break;
      default: throw Malformed("unsupported wire type " + std::to_string(type));
    }
  }
};

void decode_event(Fields event, std::vector<ScalarEvent>& out) {
  double wall_time = 0;
  long step = 0;
  const size_t first = out.size();
  while (!event.done()) {
    uint32_t type;
    const uint32_t field = event.key(type);
    if (field == kEventWallTime && type == kFixed64) {
      const uint64_t bits = get_le64(event.take(8));
      std::memcpy(&wall_time, &bits, sizeof wall_time);
    } else if (field == kEventStep && type == kVarint) {
      step = static_cast<long>(static_cast<int64_t>(event.varint()));
    } else if (field == kEventSummary && type == kLengthDelimited) {
      Fields summary = event.sub();
      while (!summary.done()) {
        uint32_t vtype;
        if (summary.key(vtype) != kSummaryValue || vtype != kLengthDelimited) {
          summary.skip(vtype);
          continue;
        }
        Fields value = summary.sub();
        ScalarEvent s;
        bool scalar = false;
        while (!value.done()) {
          uint32_t ftype;
          const uint32_t f = value.key(ftype);
          if (f == kValueTag && ftype == kLengthDelimited) {
            Fields tag = value.sub();
            s.tag.assign(reinterpret_cast<const char*>(tag.p), static_cast<size_t>(tag.end - tag.p));
          } else if (f == kValueSimpleValue && ftype == kFixed32) {
            const uint32_t bits = get_le32(value.take(4));
            std::memcpy(&s.value, &bits, sizeof s.value);
            scalar = true;
          } else {
            value.skip(ftype);
          }
        }
        if (scalar) out.push_back(std::move(s));
      }
    } else {
      event.skip(type);
    }
  }
  // wall_time and step may come after the summary in the byte stream.
  for (size_t i = first; i < out.size(); ++i) {
    out[i].wall_time = wall_time;
    out[i].step = step;
  }
}

}  // namespace

uint32_t crc32c(const void* data, std::size_t size, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = kCrcTable[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, std::size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

// ---- writer -----------------------------------------------------------------

TensorBoardWriter::TensorBoardWriter(const std::string& dir, std::size_t flush_every_records,
                                     double flush_every_seconds)
    : flush_every_records_(flush_every_records),
      flush_every_(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(flush_every_seconds))),
      last_flush_(std::chrono::steady_clock::now()) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir, "cannot create the TensorBoard log folder: " + ec.message());
  const std::string stem = (fs::path(dir) / ("events.out.tfevents." + std::to_string(std::time(nullptr)) + "." +
                                             host_name() + "." + std::to_string(::getpid())))
                               .string();
  // "x" (exclusive create) so that a second writer in the same folder, process
  // and second gets its own file instead of truncating the first one's.
  for (int n = 0; !file_; ++n) {
    path_ = stem + (n == 0 ? "" : "." + std::to_string(n)) + ".iris";
    file_ = std::fopen(path_.c_str(), "wbx");
    if (!file_ && (errno != EEXIST || n >= 1000))
      throw Error(path_, std::string("cannot create the TensorBoard event file: ") + std::strerror(errno));
  }
  // Records are batched in pending_, so stdio's own buffer would only copy.
  std::setvbuf(file_, nullptr, _IONBF, 0);
  std::string event;
  put_double(event, kEventWallTime, unix_now());
  put_bytes(event, kEventFileVersion, "brain.Event:2");
  append_record(event);
  // Written at once, so the file is a valid event file from the start.
  try {
    flush();
  } catch (...) {
    std::fclose(file_);  // no destructor runs for a throwing constructor
    throw;
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const std::exception& e) {
    log::warn(e.what());
  }
  if (std::fclose(file_) != 0)
    log::warn(path_ + ": closing the TensorBoard event file failed: " + std::strerror(errno));
}

void TensorBoardWriter::append_record(const std::string& event) {
  std::string header;
  put_le(header, event.size(), 8);
  pending_ += header;
  put_le(pending_, masked_crc32c(header.data(), header.size()), 4);
  pending_ += event;
  put_le(pending_, masked_crc32c(event.data(), event.size()), 4);
  ++pending_records_;
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, long step) {
  std::string v;
  put_bytes(v, kValueTag, tag);
  put_float(v, kValueSimpleValue, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, kSummaryValue, v);
  std::string event;
  put_double(event, kEventWallTime, unix_now());
  // proto3 leaves out zero scalars; doing the same keeps the bytes canonical.
  if (step != 0) {
    put_key(event, kEventStep, kVarint);
    put_varint(event, static_cast<uint64_t>(static_cast<int64_t>(step)));  // negative: 10-byte two's complement
  }
  put_bytes(event, kEventSummary, summary);
  append_record(event);
  if (pending_records_ >= flush_every_records_ || std::chrono::steady_clock::now() - last_flush_ >= flush_every_)
    flush();
}

void TensorBoardWriter::flush() {
  last_flush_ = std::chrono::steady_clock::now();
  if (pending_.empty()) return;
  // Dropped even on failure: retrying a partly written batch would duplicate
  // records after the part that made it to disk.
  std::string data;
  data.swap(pending_);
  pending_records_ = 0;
  if (std::fwrite(data.data(), 1, data.size(), file_) != data.size() || std::fflush(file_) != 0)
    throw Error(path_, std::string("cannot write the TensorBoard event file: ") + std::strerror(errno));
}

// ---- reader -----------------------------------------------------------------

std::vector<ScalarEvent> read_tensorboard_scalars(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file, "cannot open the TensorBoard event file");
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw Error(file, "cannot read the TensorBoard event file");
  const auto* base = reinterpret_cast<const unsigned char*>(bytes.data());
  const uint64_t size = bytes.size();

  std::vector<ScalarEvent> out;
  uint64_t offset = 0;
  while (offset < size) {
    const std::string at = " at offset " + std::to_string(offset);
    const uint64_t left = size - offset;
    if (left < 12)
      throw Error(file, "truncated record" + at + ": " + std::to_string(left) + " bytes left, its header needs 12");
    const unsigned char* p = base + offset;
    if (get_le32(p + 8) != masked_crc32c(p, 8)) throw Error(file, "bad length CRC" + at);
    const uint64_t length = get_le64(p);
    if (length > left - 12 || left - 12 - length < 4)
      throw Error(file, "truncated record" + at + ": it declares " + std::to_string(length) + " data bytes, " +
                            std::to_string(left - 12) + " bytes follow its header (data and 4-byte CRC needed)");
    const unsigned char* data = p + 12;
    if (get_le32(data + length) != masked_crc32c(data, length)) throw Error(file, "bad data CRC" + at);
    try {
      decode_event({data, data + length}, out);
    } catch (const Malformed& e) {
      throw Error(file, std::string("malformed event") + at + ": " + e.what());
    }
    offset += 12 + length + 4;
  }
  return out;
}

}  // namespace iris::train
