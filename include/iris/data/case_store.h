#pragma once
// Training cases that need not all fit in memory: each case is described
// once (its classes, where they lie, its shape) and its voxels are read on
// demand through the case loader (from data.cache: one file read), kept in a
// least-recently-used set bounded in bytes (data.cache_memory_gb).
#include <cstddef>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>

#include "iris/data/dataset.h"

namespace iris::data {

// Fills c.shape and c.locations (for c.classes) from c.labels.
void index_case(CaseVolume& c, long max_samples = 10000);

// Voxels (image + labels) of a loaded case, in bytes.
size_t case_bytes(const CaseVolume& c);

class CaseStore {
 public:
  using Load = std::function<CaseVolume(size_t case_index)>;
  // `budget_bytes`: the resident cases' voxels stay under it, except that
  // the cases in use are never dropped (so at least one is always kept).
  CaseStore(Load load, size_t budget_bytes);

  // The case's voxels; thread-safe; loads outside the lock, so loader
  // threads read different cases in parallel.
  std::shared_ptr<const CaseVolume> get(size_t case_index) const;

  size_t resident_bytes() const;
  size_t resident_cases() const;
  size_t loads() const;  // reads so far (misses)

 private:
  Load load_;
  size_t budget_;
  mutable std::mutex mutex_;
  mutable std::list<size_t> order_;  // most recent first
  struct Entry {
    std::shared_ptr<const CaseVolume> volume;
    std::list<size_t>::iterator position;
    size_t bytes = 0;
  };
  mutable std::map<size_t, Entry> resident_;
  mutable size_t bytes_ = 0, loads_ = 0;
};

}  // namespace iris::data
