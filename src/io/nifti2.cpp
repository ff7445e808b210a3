#include "nifti2.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include <torch/types.h>
#include <zlib.h>

#include "iris/common/error.h"

namespace iris::io::detail {
namespace {

constexpr int kNifti2HeaderSize = 540;

struct GzFile {
  explicit GzFile(const std::string& path) : handle(gzopen(path.c_str(), "rb")) {}
  ~GzFile() {
    if (handle) gzclose(handle);
  }
  gzFile handle;
};

// Reads exactly n bytes or throws (gzread also reads plain files).
void read_exactly(GzFile& f, void* out, size_t n, const std::string& path, const char* what) {
  size_t done = 0;
  while (done < n) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
    const int got = gzread(f.handle, static_cast<char*>(out) + done, chunk);
    if (got <= 0) throw Error(path, std::string("file ends inside the ") + what + " (truncated?)");
    done += static_cast<size_t>(got);
  }
}

template <typename T>
T field(const unsigned char* header, size_t offset, bool swap) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, header + offset, sizeof(T));
  if (swap) std::reverse(bytes, bytes + sizeof(T));
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

// Header byte order relative to this machine: returns false when not NIfTI-2.
bool nifti2_byte_order(const unsigned char* header, bool& swap) {
  for (bool s : {false, true})
    if (field<int32_t>(header, 0, s) == kNifti2HeaderSize) {
      swap = s;
      return true;
    }
  return false;
}

template <typename T>
at::Tensor decode(const std::vector<unsigned char>& raw, int64_t count, bool swap) {
  at::Tensor out = torch::empty({count}, torch::kDouble);
  double* dst = out.data_ptr<double>();
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<double>(field<T>(raw.data(), i * sizeof(T), swap));
  return out;
}

}  // namespace

bool is_nifti2(const std::string& path) {
  GzFile f(path);
  if (!f.handle) return false;
  unsigned char header[4];
  if (gzread(f.handle, header, 4) != 4) return false;
  bool swap = false;
  return nifti2_byte_order(header, swap);
}

Image read_nifti2(const std::string& path) {
  GzFile f(path);
  if (!f.handle) throw Error(path, "cannot open the file");
  unsigned char h[kNifti2HeaderSize];
  read_exactly(f, h, sizeof h, path, "NIfTI-2 header");
  bool swap = false;
  if (!nifti2_byte_order(h, swap)) throw Error(path, "is not a NIfTI-2 file");

  const auto datatype = field<int16_t>(h, 12, swap);
  int64_t dim[8];
  for (int i = 0; i < 8; ++i) dim[i] = field<int64_t>(h, 16 + 8 * i, swap);
  double pixdim[8];
  for (int i = 0; i < 8; ++i) pixdim[i] = field<double>(h, 104 + 8 * i, swap);
  const auto vox_offset = field<int64_t>(h, 168, swap);
  const auto slope = field<double>(h, 176, swap);
  const auto intercept = field<double>(h, 184, swap);
  const auto qform_code = field<int32_t>(h, 344, swap);
  const auto sform_code = field<int32_t>(h, 348, swap);

  if (dim[0] < 1 || dim[0] > 7) throw Error(path, "has an invalid NIfTI-2 dim[0]");
  std::vector<int64_t> sizes(dim + 1, dim + 1 + dim[0]);
  while (sizes.size() > 3 && sizes.back() == 1) sizes.pop_back();
  if (sizes.size() != 3) {
    std::string s;
    for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "x" : "") + std::to_string(sizes[i]);
    throw Error(path, "is " + std::to_string(sizes.size()) + "-D (" + s + "); a 3-D image is needed");
  }
  const int64_t count = sizes[0] * sizes[1] * sizes[2];

  // Skip to the voxels (header extensions may sit between).
  std::vector<unsigned char> skip(static_cast<size_t>(std::max<int64_t>(0, vox_offset - kNifti2HeaderSize)));
  read_exactly(f, skip.data(), skip.size(), path, "header extension");

  size_t bytes_per_voxel = 0;
  switch (datatype) {
    case 2: case 256: bytes_per_voxel = 1; break;
    case 4: case 512: bytes_per_voxel = 2; break;
    case 8: case 16: case 768: bytes_per_voxel = 4; break;
    case 64: case 1024: case 1280: bytes_per_voxel = 8; break;
    default: throw Error(path, "has an unsupported NIfTI datatype " + std::to_string(datatype));
  }
  std::vector<unsigned char> raw(static_cast<size_t>(count) * bytes_per_voxel);
  read_exactly(f, raw.data(), raw.size(), path, "voxel data");
  at::Tensor v;
  switch (datatype) {
    case 2: v = decode<uint8_t>(raw, count, swap); break;
    case 256: v = decode<int8_t>(raw, count, swap); break;
    case 4: v = decode<int16_t>(raw, count, swap); break;
    case 512: v = decode<uint16_t>(raw, count, swap); break;
    case 8: v = decode<int32_t>(raw, count, swap); break;
    case 768: v = decode<uint32_t>(raw, count, swap); break;
    case 16: v = decode<float>(raw, count, swap); break;
    case 64: v = decode<double>(raw, count, swap); break;
    case 1024: v = decode<int64_t>(raw, count, swap); break;
    case 1280: v = decode<uint64_t>(raw, count, swap); break;
  }
  if (slope != 0 && std::isfinite(slope) && !(slope == 1 && intercept == 0)) v = v * slope + intercept;

  Image out;
  out.source = path;
  out.voxels = v.reshape({sizes[2], sizes[1], sizes[0]});
  Geometry& g = out.geometry;
  g.size = {static_cast<long>(sizes[0]), static_cast<long>(sizes[1]), static_cast<long>(sizes[2])};
  double ras[3][4] = {{0}};  // voxel index -> RAS mm, as in the header
  if (sform_code > 0) {
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) ras[r][c] = field<double>(h, 400 + 32 * r + 8 * c, swap);
  } else if (qform_code > 0) {
    const double b = field<double>(h, 352, swap), c = field<double>(h, 360, swap),
                 d = field<double>(h, 368, swap);
    const double a = std::sqrt(std::max(0.0, 1.0 - b * b - c * c - d * d));
    const double rot[3][3] = {{a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)},
                              {2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)},
                              {2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b}};
    const double qfac = pixdim[0] < 0 ? -1.0 : 1.0;
    for (int r = 0; r < 3; ++r) {
      for (int col = 0; col < 3; ++col)
        ras[r][col] = rot[r][col] * std::abs(pixdim[col + 1]) * (col == 2 ? qfac : 1.0);
      ras[r][3] = field<double>(h, 376 + 8 * r, swap);
    }
  } else {
    for (int i = 0; i < 3; ++i) ras[i][i] = std::abs(pixdim[i + 1]);
  }
  // RAS -> LPS: negate the x and y rows.
  for (int c = 0; c < 3; ++c) {
    const double length = std::sqrt(ras[0][c] * ras[0][c] + ras[1][c] * ras[1][c] + ras[2][c] * ras[2][c]);
    if (!(length > 0)) throw Error(path, "has a zero-length voxel axis in its NIfTI-2 header");
    g.spacing[c] = length;
    for (int r = 0; r < 3; ++r) g.direction[3 * r + c] = (r < 2 ? -1.0 : 1.0) * ras[r][c] / length;
  }
  for (int r = 0; r < 3; ++r) g.origin[r] = (r < 2 ? -1.0 : 1.0) * ras[r][3];
  return out;
}

void check_gzip_complete(const std::string& path) {
  GzFile f(path);
  if (!f.handle) throw Error(path, "cannot open the file");
  std::vector<char> buffer(1 << 20);
  int got = 0;
  while ((got = gzread(f.handle, buffer.data(), static_cast<unsigned>(buffer.size()))) > 0) {
  }
  int code = Z_OK;
  const char* message = gzerror(f.handle, &code);
  if (got < 0 || (code != Z_OK && code != Z_STREAM_END))
    throw Error(path, std::string("compressed data is truncated or corrupt (zlib: ") +
                          (message ? message : "unknown") + ")");
}

}  // namespace iris::io::detail
