#include "nifti.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <sys/stat.h>

#include <ATen/ATen.h>
#ifdef IRIS_HAVE_ZLIB
#include <zlib.h>
#endif

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"

namespace iris::io::detail {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ------------------------------------------------------------ byte sources

class Source {
 public:
  explicit Source(const std::string& path) : path_(path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw Error(path, "file not found");
    if (!S_ISREG(st.st_mode)) throw Error(path, "is not a regular file");
    file_size_ = static_cast<uint64_t>(st.st_size);
    plain_ = std::fopen(path.c_str(), "rb");
    if (!plain_) throw Error(path, std::string("cannot open: ") + std::strerror(errno));
    unsigned char magic[2] = {0, 0};
    const size_t got = std::fread(magic, 1, 2, plain_);
    gzip_ = got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    std::rewind(plain_);
    if (gzip_) {
#ifdef IRIS_HAVE_ZLIB
      std::fclose(plain_);
      plain_ = nullptr;
      gz_ = gzopen(path.c_str(), "rb");
      if (!gz_) throw Error(path, "cannot open the compressed file");
      gzbuffer(gz_, 1 << 18);
#else
      throw Error(path, "is gzip-compressed, but this build of iris has no zlib: decompress it (gunzip) or build "
                        "with zlib");
#endif
    }
  }
  ~Source() {
    if (plain_) std::fclose(plain_);
#ifdef IRIS_HAVE_ZLIB
    if (gz_) gzclose(gz_);
#endif
  }
  bool gzip() const { return gzip_; }
  uint64_t file_size() const { return file_size_; }

  void read(void* out, uint64_t n, const char* what) {
    auto* p = static_cast<char*>(out);
    while (n > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n, 1u << 30));
      long got = 0;
      if (plain_) {
        got = static_cast<long>(std::fread(p, 1, chunk, plain_));
      } else {
#ifdef IRIS_HAVE_ZLIB
        got = gzread(gz_, p, chunk);
        if (got < 0) gz_failed(what);
#endif
      }
      if (got <= 0) throw Error(path_, std::string("the file ends inside the ") + what + " (truncated?)");
      p += got;
      n -= static_cast<uint64_t>(got);
    }
  }

  void skip(uint64_t n, const char* what) {
    std::vector<char> buffer(static_cast<size_t>(std::min<uint64_t>(n, 1 << 20)));
    while (n > 0) {
      const uint64_t step = std::min<uint64_t>(n, buffer.size());
      read(buffer.data(), step, what);
      n -= step;
    }
  }

  // A gzip stream is checked to its end (its CRC and length trailer).
  void check_end() {
#ifdef IRIS_HAVE_ZLIB
    if (!gz_) return;
    char buffer[1 << 16];
    int got = 0;
    while ((got = gzread(gz_, buffer, sizeof buffer)) > 0) {
    }
    if (got < 0) gz_failed("compressed data");
    int code = Z_OK;
    gzerror(gz_, &code);
    if (code != Z_OK && code != Z_STREAM_END) gz_failed("compressed data");
#endif
  }

 private:
  [[noreturn]] void gz_failed(const char* what) {
#ifdef IRIS_HAVE_ZLIB
    int code = Z_OK;
    const char* message = gzerror(gz_, &code);
    throw Error(path_, std::string("compressed data is truncated or corrupt in the ") + what + " (zlib: " +
                           (message && *message ? message : "unknown") + ")");
#else
    throw Error(path_, what);
#endif
  }

  std::string path_;
  std::FILE* plain_ = nullptr;
#ifdef IRIS_HAVE_ZLIB
  gzFile gz_ = nullptr;
#endif
  bool gzip_ = false;
  uint64_t file_size_ = 0;
};

// ------------------------------------------------------------ header fields

template <typename T>
T field(const unsigned char* header, size_t offset, bool swap) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, header + offset, sizeof(T));
  if (swap) std::reverse(bytes, bytes + sizeof(T));
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

struct Header {
  int version = 1;
  bool swap = false;
  int datatype = 0;
  std::vector<int64_t> dim;  // dim[1..dim[0]]
  std::array<double, 8> pixdim{};
  double vox_offset = 0;
  double slope = 0, intercept = 0;
  int qform_code = 0, sform_code = 0;
  double quatern[3] = {0, 0, 0}, qoffset[3] = {0, 0, 0};
  double srow[3][4] = {{0}};
};

Header parse_header(Source& in, const std::string& path) {
  unsigned char h[540] = {0};
  try {
    in.read(h, 348, "header");
  } catch (const Error&) {
    throw Error(path, "is too short to be a NIfTI file");
  }
  Header H;
  const int32_t size_native = field<int32_t>(h, 0, false), size_swapped = field<int32_t>(h, 0, true);
  if (size_native == 348 || size_swapped == 348) {
    H.version = 1;
    H.swap = size_native != 348;
  } else if (size_native == 540 || size_swapped == 540) {
    H.version = 2;
    H.swap = size_native != 540;
    in.read(h + 348, 540 - 348, "NIfTI-2 header");
  } else {
    throw Error(path, "is not a NIfTI file (its header size field is neither 348 nor 540)");
  }
  const bool s = H.swap;
  if (H.version == 1) {
    const char* magic = reinterpret_cast<const char*>(h + 344);
    if (std::strncmp(magic, "ni1", 4) == 0)
      throw Error(path, "is the header of a .hdr/.img pair; iris reads single-file NIfTI (.nii, .nii.gz)");
    if (std::strncmp(magic, "n+1", 4) != 0)
      throw Error(path, "is not a NIfTI-1 file (no 'n+1' magic; an Analyze 7.5 header?)");
    const int16_t ndim = field<int16_t>(h, 40, s);
    if (ndim < 1 || ndim > 7) throw Error(path, "has an invalid dim[0] (" + std::to_string(ndim) + ")");
    for (int i = 1; i <= ndim; ++i) H.dim.push_back(field<int16_t>(h, 40 + 2 * i, s));
    H.datatype = field<int16_t>(h, 70, s);
    for (int i = 0; i < 8; ++i) H.pixdim[i] = field<float>(h, 76 + 4 * i, s);
    H.vox_offset = field<float>(h, 108, s);
    H.slope = field<float>(h, 112, s);
    H.intercept = field<float>(h, 116, s);
    H.qform_code = field<int16_t>(h, 252, s);
    H.sform_code = field<int16_t>(h, 254, s);
    for (int i = 0; i < 3; ++i) {
      H.quatern[i] = field<float>(h, 256 + 4 * i, s);
      H.qoffset[i] = field<float>(h, 268 + 4 * i, s);
      for (int c = 0; c < 4; ++c) H.srow[i][c] = field<float>(h, 280 + 16 * i + 4 * c, s);
    }
  } else {
    if (std::memcmp(h + 4, "n+2\0", 4) != 0)
      throw Error(path, "is not a single-file NIfTI-2 file (no 'n+2' magic)");
    H.datatype = field<int16_t>(h, 12, s);
    const int64_t ndim = field<int64_t>(h, 16, s);
    if (ndim < 1 || ndim > 7) throw Error(path, "has an invalid dim[0] (" + std::to_string(ndim) + ")");
    for (int i = 1; i <= ndim; ++i) H.dim.push_back(field<int64_t>(h, 16 + 8 * i, s));
    for (int i = 0; i < 8; ++i) H.pixdim[i] = field<double>(h, 104 + 8 * i, s);
    H.vox_offset = static_cast<double>(field<int64_t>(h, 168, s));
    H.slope = field<double>(h, 176, s);
    H.intercept = field<double>(h, 184, s);
    H.qform_code = field<int32_t>(h, 344, s);
    H.sform_code = field<int32_t>(h, 348, s);
    for (int i = 0; i < 3; ++i) {
      H.quatern[i] = field<double>(h, 352 + 8 * i, s);
      H.qoffset[i] = field<double>(h, 376 + 8 * i, s);
      for (int c = 0; c < 4; ++c) H.srow[i][c] = field<double>(h, 400 + 32 * i + 8 * c, s);
    }
  }
  return H;
}

struct TypeInfo {
  at::ScalarType stored;  // the tensor type the bytes are read into
  int bytes;
  const char* name;
};

TypeInfo type_of(int datatype, const std::string& path) {
  switch (datatype) {
    case 2: return {at::kByte, 1, "uint8"};
    case 256: return {at::kChar, 1, "int8"};
    case 4: return {at::kShort, 2, "int16"};
    case 512: return {at::kShort, 2, "uint16"};  // widened to int32 after reading
    case 8: return {at::kInt, 4, "int32"};
    case 768: return {at::kInt, 4, "uint32"};    // widened to int64
    case 16: return {at::kFloat, 4, "float32"};
    case 64: return {at::kDouble, 8, "float64"};
    case 1024: return {at::kLong, 8, "int64"};
    case 1280: return {at::kLong, 8, "uint64"};  // refused above int64's range
    default: break;
  }
  throw Error(path, "has NIfTI datatype " + std::to_string(datatype) +
                        ", which iris does not read (integers, float32 and float64 are supported; complex and RGB "
                        "are not images of one value per voxel)");
}

// RAS voxel-to-world matrices, columns scaled by the voxel size.
using Affine = std::array<std::array<double, 4>, 3>;

Affine qform_affine(const Header& H, const std::array<double, 3>& spacing) {
  double b = H.quatern[0], c = H.quatern[1], d = H.quatern[2];
  double a = 1.0 - (b * b + c * c + d * d);
  if (a < 1e-7) {  // as nifti_quatern_to_mat44: renormalise b, c, d, and a = 0
    const double n = 1.0 / std::sqrt(b * b + c * c + d * d);
    b *= n;
    c *= n;
    d *= n;
    a = 0.0;
  } else {
    a = std::sqrt(a);
  }
  const double r[3][3] = {{a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)},
                          {2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)},
                          {2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b}};
  const double qfac = H.pixdim[0] < 0 ? -1.0 : 1.0;
  Affine m{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[i][j] = r[i][j] * spacing[j] * (j == 2 ? qfac : 1.0);
    m[i][3] = H.qoffset[i];
  }
  return m;
}

Affine sform_affine(const Header& H) {
  Affine m{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) m[i][j] = H.srow[i][j];
  return m;
}

double column_length(const Affine& m, int j) {
  return std::sqrt(m[0][j] * m[0][j] + m[1][j] * m[1][j] + m[2][j] * m[2][j]);
}

// A rotation once the column lengths are divided out (ITK refuses shears).
bool is_rigid(const Affine& m) {
  double n[3];
  for (int j = 0; j < 3; ++j) {
    n[j] = column_length(m, j);
    if (!(n[j] > 0) || !std::isfinite(n[j])) return false;
  }
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b) {
      double dot = 0;
      for (int r = 0; r < 3; ++r) dot += m[r][a] * m[r][b];
      if (std::abs(dot / (n[a] * n[b])) > 1e-4) return false;
    }
  return true;
}

bool same_directions(const Affine& a, const Affine& b) {
  for (int j = 0; j < 3; ++j) {
    const double la = column_length(a, j), lb = column_length(b, j);
    for (int r = 0; r < 3; ++r)
      if (std::abs(a[r][j] / la - b[r][j] / lb) > 1e-4) return false;
  }
  for (int r = 0; r < 3; ++r)
    if (std::abs(a[r][3] - b[r][3]) > 1e-3) return false;
  return true;
}

Geometry geometry_of(const Header& H, const std::array<long, 3>& size, const std::string& path, bool prefer_sform) {
  const bool sform_set = H.sform_code > 0 && is_rigid(sform_affine(H));
  std::array<double, 3> spacing{};
  for (int i = 0; i < 3; ++i) {
    const double p = std::abs(H.pixdim[i + 1]);
    if (p > 0 && std::isfinite(p)) {
      spacing[i] = p;
    } else if (sform_set) {
      spacing[i] = column_length(sform_affine(H), i);  // the sform says what pixdim does not
    } else {
      throw Error(path, "has no voxel size along axis " + std::to_string(i) + " (pixdim[" + std::to_string(i + 1) +
                            "] = " + std::to_string(H.pixdim[i + 1]) + ") and no sform to take it from");
    }
  }
  Affine m{};
  bool have = false;
  const bool qform_set = H.qform_code > 0;
  if (sform_set) {
    const bool agree = qform_set && same_directions(sform_affine(H), qform_affine(H, spacing));
    if (prefer_sform || !qform_set || H.sform_code == 1 || agree) {
      m = sform_affine(H);
      have = true;
    }
  }
  if (!have && qform_set) {
    m = qform_affine(H, spacing);
    have = true;
  }
  Geometry g;
  g.size = size;
  g.spacing = spacing;
  if (!have) return g;  // no transform: identity axes at the origin, as ITK reads it
  for (int j = 0; j < 3; ++j) {
    const double length = column_length(m, j);
    if (!(length > 0) || !std::isfinite(length)) throw Error(path, "has a degenerate voxel-to-world transform");
    for (int r = 0; r < 3; ++r) g.direction[3 * r + j] = (r < 2 ? -1.0 : 1.0) * m[r][j] / length;
  }
  for (int r = 0; r < 3; ++r) g.origin[r] = (r < 2 ? -1.0 : 1.0) * m[r][3];
  for (int i = 0; i < 3; ++i)
    if (!std::isfinite(g.origin[i])) throw Error(path, "has a non-finite origin in its header");
  return g;
}

void swap_bytes(at::Tensor& t) {
  const int n = static_cast<int>(t.element_size());
  if (n == 1) return;
  auto* p = static_cast<unsigned char*>(t.data_ptr());
  const int64_t count = t.numel();
  for (int64_t i = 0; i < count; ++i) std::reverse(p + i * n, p + (i + 1) * n);
}

}  // namespace

bool is_nifti_path(const std::string& path) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  return ends_with(lower, ".nii") || ends_with(lower, ".nii.gz");
}

NiftiVolume read_nifti(const std::string& path, bool prefer_sform, bool components) {
  Source in(path);
  const Header H = parse_header(in, path);
  const TypeInfo type = type_of(H.datatype, path);

  std::vector<int64_t> sizes = H.dim;
  for (size_t i = 0; i < sizes.size(); ++i)
    if (sizes[i] < 1)
      throw Error(path, "has dim[" + std::to_string(i + 1) + "] = " + std::to_string(sizes[i]) + " (must be >= 1)");
  while (sizes.size() > 3 && sizes.back() == 1) sizes.pop_back();
  const bool four_d = components && sizes.size() == 4;
  if (sizes.size() != 3 && !four_d) {
    std::string text;
    for (size_t i = 0; i < sizes.size(); ++i) text += (i ? "x" : "") + std::to_string(sizes[i]);
    throw Error(path, "is " + std::to_string(sizes.size()) + "-D (" + text + "); a 3-D image is needed");
  }
  uint64_t count = 1;
  for (int64_t s : sizes) {
    if (static_cast<uint64_t>(s) > (uint64_t{1} << 40) / count) throw Error(path, "has an impossibly large size");
    count *= static_cast<uint64_t>(s);
  }
  const uint64_t data_bytes = count * static_cast<uint64_t>(type.bytes);
  const uint64_t header_bytes = H.version == 1 ? 348 : 540;
  if (!(H.vox_offset >= static_cast<double>(header_bytes)) || H.vox_offset != std::floor(H.vox_offset) ||
      H.vox_offset > 1e15)
    throw Error(path, "has an invalid vox_offset (" + std::to_string(H.vox_offset) + "; the voxels must start after the " +
                          std::to_string(header_bytes) + "-byte header)");
  const uint64_t offset = static_cast<uint64_t>(H.vox_offset);
  if (!in.gzip() && offset + data_bytes > in.file_size()) {
    if (offset >= in.file_size())
      throw Error(path, "its header puts the voxels at byte " + std::to_string(offset) + ", past the end of the file (" +
                            std::to_string(in.file_size()) + " bytes)");
    throw Error(path, "holds " + std::to_string(in.file_size() - offset) + " bytes of voxel data but its header needs " +
                          std::to_string(data_bytes) + " (" + std::to_string(sizes[0]) + "x" + std::to_string(sizes[1]) +
                          "x" + std::to_string(sizes[2]) + " " + type.name + "): the file is truncated");
  }
  in.skip(offset - header_bytes, "header extension");
  at::Tensor raw = four_d ? at::empty({sizes[3], sizes[2], sizes[1], sizes[0]}, at::TensorOptions().dtype(type.stored))
                          : at::empty({sizes[2], sizes[1], sizes[0]}, at::TensorOptions().dtype(type.stored));
  in.read(raw.data_ptr(), data_bytes, "voxel data");
  in.check_end();
  if (H.swap) swap_bytes(raw);
  if (H.datatype == 512) raw = raw.to(at::kInt).bitwise_and(at::Scalar(static_cast<int64_t>(0xFFFF)));
  if (H.datatype == 768) raw = raw.to(at::kLong).bitwise_and(at::Scalar(static_cast<int64_t>(0xFFFFFFFFLL)));
  if (H.datatype == 1280 && raw.numel() > 0 && raw.min().item<int64_t>() < 0)
    throw Error(path, "has uint64 voxels above the int64 range");

  NiftiVolume out;
  out.image.source = path;
  out.image.voxels = raw;
  out.image.geometry =
      geometry_of(H, {static_cast<long>(sizes[0]), static_cast<long>(sizes[1]), static_cast<long>(sizes[2])}, path,
                  prefer_sform);
  // scl_slope 0 (or not finite) means "no scaling", as in the standard.
  if (H.slope != 0 && std::isfinite(H.slope) && std::isfinite(H.intercept)) {
    out.slope = H.slope;
    out.intercept = H.intercept;
  }
  return out;
}

// ------------------------------------------------------------ writing

namespace {

template <typename T>
void put(unsigned char* h, size_t offset, T value) {
  std::memcpy(h + offset, &value, sizeof(T));
}

// nifti_mat44_to_quatern for an orthonormal R (rows of RAS directions).
void quaternion_of(double R[3][3], double& qfac, double& b, double& c, double& d) {
  const double det = R[0][0] * (R[1][1] * R[2][2] - R[1][2] * R[2][1]) -
                     R[0][1] * (R[1][0] * R[2][2] - R[1][2] * R[2][0]) +
                     R[0][2] * (R[1][0] * R[2][1] - R[1][1] * R[2][0]);
  qfac = 1.0;
  if (det < 0) {
    qfac = -1.0;
    for (int i = 0; i < 3; ++i) R[i][2] = -R[i][2];
  }
  double a = R[0][0] + R[1][1] + R[2][2] + 1.0;
  if (a > 0.5) {
    a = 0.5 * std::sqrt(a);
    b = 0.25 * (R[2][1] - R[1][2]) / a;
    c = 0.25 * (R[0][2] - R[2][0]) / a;
    d = 0.25 * (R[1][0] - R[0][1]) / a;
  } else {
    const double xd = 1.0 + R[0][0] - (R[1][1] + R[2][2]);
    const double yd = 1.0 + R[1][1] - (R[0][0] + R[2][2]);
    const double zd = 1.0 + R[2][2] - (R[0][0] + R[1][1]);
    if (xd > 1.0) {
      b = 0.5 * std::sqrt(xd);
      c = 0.25 * (R[0][1] + R[1][0]) / b;
      d = 0.25 * (R[0][2] + R[2][0]) / b;
      a = 0.25 * (R[2][1] - R[1][2]) / b;
    } else if (yd > 1.0) {
      c = 0.5 * std::sqrt(yd);
      b = 0.25 * (R[0][1] + R[1][0]) / c;
      d = 0.25 * (R[1][2] + R[2][1]) / c;
      a = 0.25 * (R[0][2] - R[2][0]) / c;
    } else {
      d = 0.5 * std::sqrt(zd);
      b = 0.25 * (R[0][2] + R[2][0]) / d;
      c = 0.25 * (R[1][2] + R[2][1]) / d;
      a = 0.25 * (R[1][0] - R[0][1]) / d;
    }
    if (a < 0) {
      b = -b;
      c = -c;
      d = -d;
    }
  }
}

}  // namespace

void write_nifti(const Image& image, const std::string& path) {
  const at::Tensor& v = image.voxels;
  const Geometry& g = image.geometry;
  if (!v.defined() || (v.dim() != 3 && v.dim() != 4)) throw Error(path, "voxels must be a [Z,Y,X] or [C,Z,Y,X] tensor");
  int16_t datatype = 0, bitpix = 0;
  switch (v.scalar_type()) {
    case at::kByte: datatype = 2; bitpix = 8; break;
    case at::kShort: datatype = 4; bitpix = 16; break;
    case at::kInt: datatype = 8; bitpix = 32; break;
    case at::kFloat: datatype = 16; bitpix = 32; break;
    default:
      throw Error(path, std::string("cannot write voxels of dtype ") + c10::toString(v.scalar_type()) +
                            " (uint8, int16, int32 or float32 are supported)");
  }
  for (int i = 0; i < v.dim(); ++i)
    if (v.size(i) > 32767) throw Error(path, "an axis longer than 32767 voxels does not fit a NIfTI-1 header");
  const bool gzip = ends_with(path, ".gz");
#ifndef IRIS_HAVE_ZLIB
  if (gzip) throw Error(path, "this build of iris has no zlib and cannot write .nii.gz: write .nii");
#endif
  unsigned char h[352] = {0};
  put<int32_t>(h, 0, 348);
  const int16_t ndim = static_cast<int16_t>(v.dim());
  put<int16_t>(h, 40, ndim);
  put<int16_t>(h, 42, static_cast<int16_t>(g.size[0]));
  put<int16_t>(h, 44, static_cast<int16_t>(g.size[1]));
  put<int16_t>(h, 46, static_cast<int16_t>(g.size[2]));
  put<int16_t>(h, 48, static_cast<int16_t>(v.dim() == 4 ? v.size(0) : 1));
  for (int i = 5; i < 8; ++i) put<int16_t>(h, 40 + 2 * i, 1);
  put<int16_t>(h, 70, datatype);
  put<int16_t>(h, 72, bitpix);
  // RAS rotation (direction with x and y negated) and its quaternion.
  double R[3][3];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) R[r][c] = (r < 2 ? -1.0 : 1.0) * g.direction[3 * r + c];
  double S[3][3];
  std::memcpy(S, R, sizeof S);
  double qfac = 1, b = 0, c = 0, d = 0;
  quaternion_of(R, qfac, b, c, d);
  put<float>(h, 76, static_cast<float>(qfac));
  for (int i = 0; i < 3; ++i) put<float>(h, 80 + 4 * i, static_cast<float>(g.spacing[i]));
  for (int i = 4; i < 8; ++i) put<float>(h, 76 + 4 * i, 1.0f);
  put<float>(h, 108, 352.0f);   // vox_offset
  put<float>(h, 112, 1.0f);     // scl_slope
  put<float>(h, 116, 0.0f);     // scl_inter
  h[123] = 2 | 8;               // xyzt_units: mm, seconds
  put<int16_t>(h, 252, 1);      // qform_code SCANNER_ANAT
  put<int16_t>(h, 254, 1);      // sform_code SCANNER_ANAT
  put<float>(h, 256, static_cast<float>(b));
  put<float>(h, 260, static_cast<float>(c));
  put<float>(h, 264, static_cast<float>(d));
  for (int r = 0; r < 3; ++r) {
    const double o = (r < 2 ? -1.0 : 1.0) * g.origin[r];
    put<float>(h, 268 + 4 * r, static_cast<float>(o));
    for (int col = 0; col < 3; ++col) put<float>(h, 280 + 16 * r + 4 * col, static_cast<float>(S[r][col] * g.spacing[col]));
    put<float>(h, 280 + 16 * r + 12, static_cast<float>(o));
  }
  std::memcpy(h + 344, "n+1\0", 4);
  const at::Tensor voxels = v.to(at::kCPU).contiguous();
  const uint64_t bytes = static_cast<uint64_t>(voxels.nbytes());
  if (!gzip) {
    write_file_atomically(
        path,
        [&](OutputFile& f) {
          f.write(h, sizeof h);
          f.write(voxels.data_ptr(), bytes);
        },
        sizeof h + bytes);
    return;
  }
#ifdef IRIS_HAVE_ZLIB
  write_file_atomically(path, [&](OutputFile& f) {
    z_stream z{};
    // 15 + 16: a gzip wrapper; level 6 as gzip's default (ITK writes level 6 too).
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      throw Error(path, "cannot start gzip compression");
    std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&z, deflateEnd);
    std::vector<unsigned char> out(1 << 20);
    auto feed = [&](const void* data, uint64_t n, bool last) {
      const auto* p = static_cast<const unsigned char*>(data);
      do {
        const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n, 1u << 30));
        z.next_in = const_cast<unsigned char*>(p);
        z.avail_in = chunk;
        p += chunk;
        n -= chunk;
        const int flush = last && n == 0 ? Z_FINISH : Z_NO_FLUSH;
        int rc = Z_OK;
        do {
          z.next_out = out.data();
          z.avail_out = static_cast<unsigned>(out.size());
          rc = deflate(&z, flush);
          if (rc == Z_STREAM_ERROR) throw Error(path, "gzip compression failed");
          f.write(out.data(), out.size() - z.avail_out);
        } while (z.avail_out == 0 || (flush == Z_FINISH && rc != Z_STREAM_END));
      } while (n > 0);
    };
    feed(h, sizeof h, false);
    feed(voxels.data_ptr(), bytes, true);
  });
#endif
}

void check_gzip_complete(const std::string& path) {
  Source in(path);
  if (!in.gzip()) return;
  in.check_end();
}

}  // namespace iris::io::detail
