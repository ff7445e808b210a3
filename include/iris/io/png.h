#pragma once
// PNG pictures (8-bit RGB), written by iris itself through the checked,
// atomic writer: reports need no image library, and a full disk is an
// error, not a crash.
#include <cstdint>
#include <string>
#include <vector>

namespace iris::io {

// `rgb`: height rows of width pixels, 3 bytes a pixel, top row first.
void write_png_rgb(const std::string& path, long width, long height, const std::vector<uint8_t>& rgb);

}  // namespace iris::io
