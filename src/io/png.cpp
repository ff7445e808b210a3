#include "iris/io/png.h"

#include <cstring>

#ifdef IRIS_HAVE_ZLIB
#include <zlib.h>
#endif

#include "iris/common/atomic_file.h"
#include "iris/common/crc32.h"
#include "iris/common/error.h"

namespace iris::io {

namespace {

void put_u32_be(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void chunk(std::vector<uint8_t>& out, const char type[4], const std::vector<uint8_t>& data) {
  put_u32_be(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32_be(out, crc32_update(0, out.data() + start, out.size() - start));
}

// A zlib stream of `raw`: deflated with zlib when the build has it, else in
// stored (uncompressed) deflate blocks, which every PNG reader accepts.
std::vector<uint8_t> zlib_stream(const std::vector<uint8_t>& raw) {
#ifdef IRIS_HAVE_ZLIB
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> out(size);
  if (compress2(out.data(), &size, raw.data(), static_cast<uLong>(raw.size()), 6) != Z_OK)
    throw Error("PNG writer", "zlib compression failed (out of memory?)");
  out.resize(size);
  return out;
#else
  std::vector<uint8_t> out{0x78, 0x01};
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    out.push_back(last ? 1 : 0);
    out.push_back(static_cast<uint8_t>(n & 0xFF));
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(~n & 0xFF));
    out.push_back(static_cast<uint8_t>((~n >> 8) & 0xFF));
    out.insert(out.end(), raw.begin() + pos, raw.begin() + pos + n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (uint8_t byte : raw) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  put_u32_be(out, (b << 16) | a);
  return out;
#endif
}

}  // namespace

void write_png_rgb(const std::string& path, long width, long height, const std::vector<uint8_t>& rgb) {
  if (width <= 0 || height <= 0 || rgb.size() != static_cast<size_t>(width * height * 3))
    throw Error(path, "a PNG picture needs width x height x 3 bytes");
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<size_t>(height * (1 + 3 * width)));
  for (long y = 0; y < height; ++y) {
    raw.push_back(0);  // filter: none
    raw.insert(raw.end(), rgb.begin() + 3 * y * width, rgb.begin() + 3 * (y + 1) * width);
  }
  std::vector<uint8_t> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> header;
  put_u32_be(header, static_cast<uint32_t>(width));
  put_u32_be(header, static_cast<uint32_t>(height));
  header.insert(header.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, no filter, no interlace
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", zlib_stream(raw));
  chunk(png, "IEND", {});
  write_file_atomically(path, [&](OutputFile& f) { f.write(png.data(), png.size()); }, png.size());
}

}  // namespace iris::io
