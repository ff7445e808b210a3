#pragma once
// Training cases preprocessed once and kept in a VolumeCache folder
// (data.cache in a training config). A machine with ITK fills it while it
// loads the raw files; a build without ITK (the CUDA machines) trains from a
// carried copy of the folder, even where the raw files are absent.
//
// Entry key: dataset, case, image and label paths as the config names them,
// the preprocessing text and the intensity scheme, so it is the same on every
// machine that runs the same config. Each entry also records a fingerprint of
// the raw files (path, size, mtime): where they exist and differ, the entry is
// stale and is rebuilt (or, without a raw loader, used with a warning).
// The case list of every dataset is recorded too, so nnU-Net/MSD datasets
// whose root folder is missing can still be split and sampled.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "iris/data/dataset.h"
#include "iris/data/volume_cache.h"

namespace iris::data {

// The label values present in `labels` (non-zero), restricted to the
// dataset's class table when it has one. iris::Error naming `where` when none.
std::vector<long> classes_present(const at::Tensor& labels, const DatasetSpec& d, const std::string& where);

class CaseCache {
 public:
  // `preprocess_text`: the preprocessing settings as configured (any stable
  // text; it only enters the key).
  CaseCache(const std::string& folder, std::string preprocess_text);

  // A loader that serves cases from the cache and fills it through `raw`.
  // `raw` may be empty (no ITK): a missing entry is then an iris::Error that
  // names the case and says how to fill the cache. `warn` receives notes
  // (stale entries used anyway, damaged entries rebuilt).
  CaseLoader loader(CaseLoader raw, std::function<void(const std::string&)> warn = {}) const;

  std::string key_for(const DatasetSpec& d, const CaseSpec& c) const;
  // Whether the case has an entry (not read: it may still be stale or damaged).
  bool contains(const DatasetSpec& d, const CaseSpec& c) const;
  // Records / reads back a dataset's case list and class table.
  void record_dataset(const DatasetSpec& d) const;
  std::optional<RecordedDataset> recorded_dataset(const std::string& dataset) const;
  const std::string& folder() const { return cache_.folder(); }

 private:
  VolumeCache cache_;
  std::string preprocess_text_;
};

}  // namespace iris::data
