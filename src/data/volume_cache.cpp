#include "iris/data/volume_cache.h"

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include <mutex>
#include <set>
#include <tuple>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"

namespace fs = std::filesystem;

namespace iris::data {
namespace {

constexpr char kMagic[8] = {'I', 'R', 'I', 'S', 'V', 'O', 'L', '1'};
constexpr uint32_t kVersion = 2;  // 2: payload aligned to 64 bytes (1: packed)
constexpr uint64_t kAlign = 64;
constexpr uint32_t kMaxInfoBytes = 1 << 20;
constexpr const char* kExtension = ".irisvol";

// ---- hashing: a 4-lane multiply/rotate hash, fast enough to checksum a
// 300 MB volume in a fraction of its read time. Not cryptographic.
constexpr uint64_t kP1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t finalise(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed + kP1, seed ^ kP2, rotl(seed, 17) + kP2, ~seed};
  const size_t blocks = n / 32;
  for (size_t b = 0; b < blocks; ++b) {
    uint64_t w[4];
    std::memcpy(w, bytes + 32 * b, 32);
    for (int l = 0; l < 4; ++l) lane[l] = rotl(lane[l] ^ (w[l] * kP2), 31) * kP1;
  }
  uint64_t h = rotl(lane[0], 1) + rotl(lane[1], 7) + rotl(lane[2], 12) + rotl(lane[3], 18) + n;
  for (size_t i = blocks * 32; i < n; ++i) h = rotl(h ^ (bytes[i] * kP1), 11) * kP2;
  return finalise(h);
}

// Accumulates hashes of pieces (order matters).
struct HashChain {
  uint64_t a = 0x243F6A8885A308D3ull, b = 0x13198A2E03707344ull;
  void add(const void* data, size_t n) {
    a = finalise(a ^ hash_bytes(data, n, a));
    b = finalise(b + hash_bytes(data, n, b ^ kP1));
  }
  void add(const std::string& s) { add(s.data(), s.size()); }
  std::string hex() const {
    char text[33];
    std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(a),
                  static_cast<unsigned long long>(b));
    return text;
  }
};

// ---- dtype codes on disk
uint8_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kByte: return 1;
    case at::kShort: return 2;
    case at::kInt: return 3;
    case at::kFloat: return 4;
    case at::kDouble: return 5;
    case at::kLong: return 6;
    default: break;
  }
  throw Error("volume cache", std::string("cannot store dtype ") + c10::toString(t));
}

std::optional<at::ScalarType> dtype_of_code(uint8_t code) {
  switch (code) {
    case 1: return at::kByte;
    case 2: return at::kShort;
    case 3: return at::kInt;
    case 4: return at::kFloat;
    case 5: return at::kDouble;
    case 6: return at::kLong;
    default: return std::nullopt;
  }
}

template <typename T>
void put_pod(std::string& out, const T& value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

void put_tensor_header(std::string& out, const at::Tensor& t) {
  put_pod(out, dtype_code(t.scalar_type()));
  put_pod(out, static_cast<uint8_t>(t.dim()));
  for (int64_t d = 0; d < t.dim(); ++d) put_pod(out, static_cast<int64_t>(t.size(d)));
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

struct TensorHeader {
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes;
};

// Reads the file header by header, checking each field against the file size
// before trusting it (a corrupt size must not cause a huge allocation).
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    file_.reset(std::fopen(path.c_str(), "rb"));
    if (!file_) throw Error(path, "cannot open the cache file");
    // The size of the opened file, not of the path: a writer may rename a
    // new file over the path between the two look-ups.
    struct stat info {};
    if (::fstat(::fileno(file_.get()), &info) != 0) throw Error(path, "cannot stat the cache file");
    file_size_ = static_cast<uint64_t>(info.st_size);
  }
  void read(void* data, size_t n) {
    if (n > file_size_ - std::min(file_size_, used_)) fail("is truncated");
    if (n > 0 && std::fread(data, 1, n, file_.get()) != n) fail("is truncated or unreadable");
    used_ += n;
    header_.append(static_cast<const char*>(data), std::min<size_t>(n, capture_ ? n : 0));
  }
  template <typename T>
  T pod() {
    T value;
    read(&value, sizeof value);
    return value;
  }
  TensorHeader tensor_header() {
    const auto dtype = dtype_of_code(pod<uint8_t>());
    if (!dtype) fail("has an unknown voxel type");
    const auto ndim = pod<uint8_t>();
    if (ndim < 3 || ndim > 4) fail("has a tensor of " + std::to_string(ndim) + " dimensions");
    TensorHeader t{*dtype, std::vector<int64_t>(ndim), 0};
    uint64_t count = 1;
    for (auto& s : t.shape) {
      s = pod<int64_t>();
      if (s < 0 || s > (int64_t(1) << 32)) fail("has an invalid tensor shape");
      count *= static_cast<uint64_t>(s);
      if (count * at::elementSize(*dtype) > file_size_) fail("is truncated (shape larger than the file)");
    }
    t.bytes = count * at::elementSize(*dtype);
    return t;
  }
  void skip(uint64_t n) {
    char buffer[kAlign];
    if (n > sizeof buffer) fail("has an invalid layout");
    read(buffer, n);
  }
  uint64_t used() const { return used_; }
  uint64_t file_size() const { return file_size_; }
  std::FILE* file() const { return file_.get(); }
  void stop_capturing() { capture_ = false; }
  const std::string& header() const { return header_; }
  uint64_t remaining() const { return file_size_ - used_; }
  [[noreturn]] void fail(const std::string& why) const { throw Error(path_, why + " (not a valid iris cache file)"); }

 private:
  std::string path_;
  File file_;
  uint64_t file_size_ = 0, used_ = 0;
  std::string header_;
  bool capture_ = true;
};

uint64_t checksum(const std::string& header, const at::Tensor& voxels, const at::Tensor* labels) {
  uint64_t h = hash_bytes(header.data(), header.size(), 1);
  h = finalise(h ^ hash_bytes(voxels.data_ptr(), voxels.nbytes(), h));
  if (labels) h = finalise(h ^ hash_bytes(labels->data_ptr(), labels->nbytes(), h));
  return h;
}

uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool same_spatial_shape(const at::Tensor& a, const at::Tensor& b) {
  for (int d = 1; d <= 3; ++d)
    if (a.size(-d) != b.size(-d)) return false;
  return true;
}

}  // namespace

void write_cached_volume(const CachedVolume& volume, const std::string& path) {
  const at::Tensor voxels = volume.voxels.to(at::kCPU).contiguous();
  if (voxels.dim() < 3 || voxels.dim() > 4) throw Error(path, "cache voxels must be [Z,Y,X] or [C,Z,Y,X]");
  const auto& g = volume.geometry;
  if (voxels.size(-1) != g.size[0] || voxels.size(-2) != g.size[1] || voxels.size(-3) != g.size[2])
    throw Error(path, "cache voxels " + c10::str(voxels.sizes()) + " do not match the geometry size");
  at::Tensor labels;
  if (volume.labels) {
    labels = volume.labels->to(at::kCPU).contiguous();
    if (labels.dim() != 3 || !same_spatial_shape(labels, voxels))
      throw Error(path, "cache labels must be [Z,Y,X] with the voxels' spatial shape");
  }
  if (volume.info.size() > kMaxInfoBytes) throw Error(path, "cache info text is too long");

  std::string header(kMagic, sizeof kMagic);
  put_pod(header, kVersion);
  put_pod(header, static_cast<uint32_t>(volume.info.size()));
  header += volume.info;
  for (long s : g.size) put_pod(header, static_cast<int64_t>(s));
  for (double v : g.spacing) put_pod(header, v);
  for (double v : g.origin) put_pod(header, v);
  for (double v : g.direction) put_pod(header, v);
  put_tensor_header(header, voxels);
  put_pod(header, static_cast<uint8_t>(labels.defined() ? 1 : 0));
  if (labels.defined()) put_tensor_header(header, labels);
  const uint64_t sum = checksum(header, voxels, labels.defined() ? &labels : nullptr);

  // Zero padding puts the voxels and the labels on 64-byte boundaries, so
  // that a mapped file serves them in place (map_cached_volume).
  const uint64_t voxel_offset = align_up(header.size());
  const uint64_t label_offset = align_up(voxel_offset + voxels.nbytes());
  const uint64_t bytes = (labels.defined() ? label_offset + labels.nbytes() : voxel_offset + voxels.nbytes()) + sizeof sum;
  const std::string zeros(kAlign, '\0');
  write_file_atomically(path, [&](OutputFile& f) {
    f.write(header.data(), header.size());
    f.write(zeros.data(), voxel_offset - header.size());
    f.write(voxels.data_ptr(), voxels.nbytes());
    if (labels.defined()) {
      f.write(zeros.data(), label_offset - voxel_offset - voxels.nbytes());
      f.write(labels.data_ptr(), labels.nbytes());
    }
    f.write(&sum, sizeof sum);
  }, bytes);
}

namespace {

// Everything before the voxels, checked against the file's size: where the
// voxels and labels lie and what they are.
struct Layout {
  CachedVolume meta;  // info and geometry; no tensors
  TensorHeader voxels;
  std::optional<TensorHeader> labels;
  uint64_t voxel_offset = 0, label_offset = 0;
};

Layout read_layout(Reader& in) {
  char magic[sizeof kMagic];
  in.read(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) in.fail("does not start with IRISVOL1");
  const auto version = in.pod<uint32_t>();
  if (version != kVersion)
    in.fail("is format version " + std::to_string(version) + "; this build reads version " + std::to_string(kVersion) +
            " (fill the cache again)");
  const auto info_bytes = in.pod<uint32_t>();
  if (info_bytes > kMaxInfoBytes) in.fail("has an oversized info field");
  Layout l;
  CachedVolume& out = l.meta;
  out.info.resize(info_bytes);
  in.read(out.info.data(), info_bytes);
  for (auto& s : out.geometry.size) s = static_cast<long>(in.pod<int64_t>());
  for (auto& v : out.geometry.spacing) v = in.pod<double>();
  for (auto& v : out.geometry.origin) v = in.pod<double>();
  for (auto& v : out.geometry.direction) v = in.pod<double>();
  l.voxels = in.tensor_header();
  const auto has_labels = in.pod<uint8_t>();
  if (has_labels > 1) in.fail("has an invalid label flag");
  if (has_labels) l.labels = in.tensor_header();
  in.stop_capturing();
  const auto& g = out.geometry;
  const auto& vs = l.voxels.shape;
  const size_t n = vs.size();
  if (vs[n - 1] != g.size[0] || vs[n - 2] != g.size[1] || vs[n - 3] != g.size[2])
    in.fail("has voxels that do not match its geometry");
  if (l.labels) {
    const auto& ls = l.labels->shape;
    if (ls.size() != 3 || ls[0] != vs[n - 3] || ls[1] != vs[n - 2] || ls[2] != vs[n - 1])
      in.fail("has labels that do not match its voxels");
  }
  // The voxels and labels start on 64-byte boundaries.
  l.voxel_offset = align_up(in.used());
  const uint64_t voxel_end = l.voxel_offset + l.voxels.bytes;
  l.label_offset = l.labels ? align_up(voxel_end) : voxel_end;
  const uint64_t end = (l.labels ? l.label_offset + l.labels->bytes : voxel_end) + sizeof(uint64_t);
  if (in.file_size() != end) in.fail(in.file_size() < end ? "is truncated" : "has trailing bytes");
  return l;
}

// Files (device, inode, size, modification time) whose checksum this process
// has verified: cache files are replaced by rename, never rewritten in place,
// so a file once verified stays valid while these stay the same.
using FileId = std::tuple<dev_t, ino_t, off_t, int64_t, int64_t>;
FileId file_id(const struct stat& s) {
  return {s.st_dev, s.st_ino, s.st_size, static_cast<int64_t>(s.st_mtim.tv_sec), static_cast<int64_t>(s.st_mtim.tv_nsec)};
}
std::mutex verified_mutex;
std::set<FileId> verified_files;

// A read-only file mapped copy-on-write: in-place writes to its tensors
// change private pages, never the file.
struct Mapping {
  void* base = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (base != MAP_FAILED) ::munmap(base, size);
  }
};

}  // namespace

CachedVolume read_cached_volume(const std::string& path) {
  Reader in(path);
  Layout l = read_layout(in);
  CachedVolume out = std::move(l.meta);
  at::Tensor voxels = at::empty(l.voxels.shape, at::TensorOptions().dtype(l.voxels.dtype));
  at::Tensor labels = l.labels ? at::empty(l.labels->shape, at::TensorOptions().dtype(l.labels->dtype)) : at::Tensor();
  in.skip(l.voxel_offset - in.used());
  in.read(voxels.data_ptr(), voxels.nbytes());
  if (labels.defined()) {
    in.skip(l.label_offset - in.used());
    in.read(labels.data_ptr(), labels.nbytes());
  }
  const auto stored = in.pod<uint64_t>();
  if (stored != checksum(in.header(), voxels, labels.defined() ? &labels : nullptr))
    in.fail("fails its checksum (corrupted)");
  out.voxels = voxels;
  if (labels.defined()) out.labels = labels;
  return out;
}

CachedVolume map_cached_volume(const std::string& path) {
  Reader in(path);
  const Layout l = read_layout(in);
  struct stat info {};
  if (::fstat(::fileno(in.file()), &info) != 0) in.fail("cannot be examined");
  auto mapping = std::make_shared<Mapping>();
  mapping->size = in.file_size();
  mapping->base = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, ::fileno(in.file()), 0);
  if (mapping->base == MAP_FAILED) throw Error(path, std::string("cannot be mapped: ") + std::strerror(errno));
  char* base = static_cast<char*>(mapping->base);
  auto view = [&](const TensorHeader& t, uint64_t offset) {
    return at::from_blob(base + offset, t.shape, [mapping](void*) {}, at::TensorOptions().dtype(t.dtype));
  };
  CachedVolume out = l.meta;
  out.voxels = view(l.voxels, l.voxel_offset);
  if (l.labels) out.labels = view(*l.labels, l.label_offset);
  const FileId id = file_id(info);
  bool known;
  {
    std::lock_guard<std::mutex> lock(verified_mutex);
    known = verified_files.count(id) > 0;
  }
  if (!known) {
    uint64_t stored;
    std::memcpy(&stored, base + mapping->size - sizeof stored, sizeof stored);
    if (stored != checksum(in.header(), out.voxels, out.labels ? &*out.labels : nullptr))
      in.fail("fails its checksum (corrupted)");
    // Hashing touched every page: let them go from this process (they stay
    // in the page cache) so that only what episodes read counts.
    ::madvise(mapping->base, mapping->size, MADV_DONTNEED);
    std::lock_guard<std::mutex> lock(verified_mutex);
    verified_files.insert(id);
  }
  return out;
}

// ------------------------------------------------------------ VolumeCache

VolumeCache::VolumeCache(std::string folder) : folder_(std::move(folder)) {
  std::error_code ec;
  fs::create_directories(folder_, ec);
  if (!fs::is_directory(folder_)) throw Error(folder_, "cannot create the cache folder");
}

namespace {
// Regular files of a path (the file itself, or a folder's files sorted by
// name so that the key does not depend on directory order).
std::vector<fs::path> input_files(const std::string& input) {
  std::error_code ec;
  if (fs::is_regular_file(input, ec)) return {fs::path(input)};
  if (!fs::is_directory(input, ec)) throw Error(input, "input not found (cannot compute its cache key)");
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(input))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}
}  // namespace

std::string VolumeCache::key_for(const std::string& input, const std::string& config_text) {
  HashChain h;
  h.add(fs::weakly_canonical(input).string());
  for (const auto& file : input_files(input)) {
    h.add(fs::relative(file, input).string());
    const uint64_t size = fs::file_size(file);
    const int64_t mtime = fs::last_write_time(file).time_since_epoch().count();
    h.add(&size, sizeof size);
    h.add(&mtime, sizeof mtime);
  }
  h.add(config_text);
  return h.hex();
}

std::string VolumeCache::text_key(const std::string& text) {
  HashChain h;
  h.add(text);
  return h.hex();
}

std::string VolumeCache::content_key_for(const std::string& input, const std::string& config_text) {
  HashChain h;
  const bool folder = fs::is_directory(input);
  std::vector<char> buffer(1 << 22);
  for (const auto& file : input_files(input)) {
    if (folder) h.add(fs::relative(file, input).string());
    File f(std::fopen(file.c_str(), "rb"));
    if (!f) throw Error(file.string(), "cannot read (to compute its cache key)");
    size_t n;
    while ((n = std::fread(buffer.data(), 1, buffer.size(), f.get())) > 0) h.add(buffer.data(), n);
  }
  h.add(config_text);
  return h.hex();
}

std::string VolumeCache::path_for(const std::string& key) const {
  if (key.empty() || key.find_first_of("/\\") != std::string::npos || key[0] == '.')
    throw Error(key, "is not a valid cache key");
  return (fs::path(folder_) / (key + kExtension)).string();
}

bool VolumeCache::contains(const std::string& key) const { return fs::exists(path_for(key)); }

std::optional<CachedVolume> VolumeCache::get(const std::string& key, std::string* rejection, bool mapped) const {
  const std::string path = path_for(key);
  if (!fs::exists(path)) return std::nullopt;
  try {
    return mapped ? map_cached_volume(path) : read_cached_volume(path);
  } catch (const Error& e) {
    if (rejection) *rejection = e.what();
    // A complete file never turns bad by itself: remove it so the next put
    // rewrites it. A newer file renamed in meanwhile would be lost too, which
    // only costs one recomputation.
    std::error_code ec;
    fs::remove(path, ec);
    return std::nullopt;
  }
}

void VolumeCache::put(const std::string& key, const CachedVolume& volume) const {
  write_cached_volume(volume, path_for(key));
}

}  // namespace iris::data
