#pragma once
// On-disk cache of preprocessed volumes. Each entry is one small
// self-describing binary file readable without ITK, so that the GPU-only
// build can train from a cache filled by iris-preprocess on a machine with
// ITK. File layout (little-endian), version 2:
//   "IRISVOL1" | u32 version | u32 info bytes | info text (free: source,
//   preprocessing config) | geometry: i64 size[3], f64 spacing[3], origin[3],
//   direction[9] | voxels: u8 dtype, u8 ndim, i64 shape[ndim] | u8 has_labels
//   [| labels: u8 dtype, u8 ndim, i64 shape[ndim]] | zeros to a multiple of
//   64 bytes | voxel bytes [| zeros to a multiple of 64 | label bytes]
//   | u64 checksum of the header, voxel bytes and label bytes.
// The checksum catches truncated and corrupted files. Files of version 1
// (the same without padding, iris before 2026-12-02) are refused like
// damaged ones: a cache is filled again, not converted.
//
// Writes are atomic (temporary file + rename in the cache folder), so any
// number of threads or processes may fill the same key at once: readers see
// either no file or one complete file, never a mix.
//
// A damaged entry (bad magic, version, sizes or checksum) is a cache MISS:
// VolumeCache::get returns nullopt, removes the file so that the next put
// rewrites it, and tells why through its optional `rejection` argument. Reading one file
// directly with read_cached_volume throws iris::Error naming the file.
#include <cstdint>
#include <optional>
#include <string>

#include <ATen/Tensor.h>

#include "iris/common/image.h"

namespace iris::data {

struct CachedVolume {
  at::Tensor voxels;                  // uint8, int16, int32, float32 or float64
  Geometry geometry;              // grid of the last three axes of voxels
  std::optional<at::Tensor> labels;   // same spatial shape, integer dtype
  std::string info;                   // free text (source, config), for people
};

// Writes/reads one cache file (the format above). write is atomic.
void write_cached_volume(const CachedVolume& volume, const std::string& path);
CachedVolume read_cached_volume(const std::string& path);  // iris::Error naming path
// The same, but voxels and labels are views of the file mapped into memory
// (copy-on-write: writing to them never changes the file), so that reading a
// patch touches only that patch's pages and a case costs no copy. The
// checksum is verified on the first mapping of each file in this process
// (the file's device, inode, size and modification time are remembered:
// cache files are replaced by rename, never edited in place).
CachedVolume map_cached_volume(const std::string& path);

class VolumeCache {
 public:
  // Creates `folder` if needed.
  explicit VolumeCache(std::string folder);

  // Key of an input (file or DICOM folder) preprocessed with `config_text`:
  // a hash of the canonical path, size and modification time of every file,
  // and the config text. Cheap; changes when the input is rewritten.
  static std::string key_for(const std::string& input_path, const std::string& config_text);
  // Same, but hashing the input's bytes instead of path/size/mtime: survives
  // moving or copying the data, costs one read of the input.
  static std::string content_key_for(const std::string& input_path, const std::string& config_text);

  // Key of any text (e.g. a description of a training case and its settings).
  static std::string text_key(const std::string& text);

  // nullopt when absent or damaged; for a damaged file `*rejection` (when
  // given) receives the reason, naming the file, and the file is removed.
  // `mapped`: map_cached_volume instead of read_cached_volume.
  std::optional<CachedVolume> get(const std::string& key, std::string* rejection = nullptr, bool mapped = false) const;
  void put(const std::string& key, const CachedVolume& volume) const;
  bool contains(const std::string& key) const;
  std::string path_for(const std::string& key) const;  // <folder>/<key>.irisvol
  const std::string& folder() const { return folder_; }

 private:
  std::string folder_;
};

}  // namespace iris::data
