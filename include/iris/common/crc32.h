#pragma once
// CRC-32 (the polynomial of zlib, PNG and zip: Python's zlib.crc32 gives the
// same values), for damage checks of the files iris writes. Not a defence
// against deliberate tampering; it catches flipped and cut bytes.
#include <cstddef>
#include <cstdint>

namespace iris {

// Continues a running CRC: crc32_update(crc32_update(0, a), b) == crc of a+b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes);

}  // namespace iris
