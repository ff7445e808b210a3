#include "iris/data/case_store.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include <ATen/ATen.h>


namespace iris::data {

namespace {

// Two passes over the label map in its own type, no volume-sized temporary
// (a mask per class would fragment the heap of a loader that indexes
// thousands of cases): counts and boxes, then evenly spaced samples in
// raster order.
template <typename T>
void index_labels(const T* v, long Z, long Y, long X, const std::vector<long>& classes, long max_samples,
                  std::map<long, ClassLocations>& out) {
  std::map<long, size_t> slot;
  for (size_t i = 0; i < classes.size(); ++i) slot.emplace(classes[i], i);
  const size_t K = classes.size();
  std::vector<long> count(K, 0);
  std::vector<std::array<long, 3>> lo(K, {Z, Y, X}), hi(K, {-1, -1, -1});
  // Slot of the last value seen: label maps come in runs.
  auto find = [&](long value, long& last_value, long& last_slot) {
    if (value != last_value) {
      last_value = value;
      const auto it = slot.find(value);
      last_slot = it == slot.end() ? -1 : static_cast<long>(it->second);
    }
    return last_slot;
  };
  long last_value = 0, last_slot = -1;
  for (long z = 0, i = 0; z < Z; ++z)
    for (long y = 0; y < Y; ++y)
      for (long x = 0; x < X; ++x, ++i) {
        if (v[i] == 0) continue;
        const long k = find(static_cast<long>(v[i]), last_value, last_slot);
        if (k < 0) continue;
        ++count[k];
        const long at[3] = {z, y, x};
        for (int a = 0; a < 3; ++a) {
          lo[k][a] = std::min(lo[k][a], at[a]);
          hi[k][a] = std::max(hi[k][a], at[a]);
        }
      }
  // Sample j of a class is its voxel number round(j * (count - 1) / (n - 1)).
  std::vector<long> n(K), taken(K, 0), seen(K, 0);
  std::vector<at::Tensor> picks(K);
  for (size_t k = 0; k < K; ++k) {
    n[k] = std::min(count[k], max_samples);
    picks[k] = at::empty({n[k], 3}, at::kInt);
  }
  auto target = [&](size_t k) {
    return n[k] <= 1 ? 0L : std::lround(static_cast<double>(taken[k]) * (count[k] - 1) / (n[k] - 1));
  };
  last_value = 0, last_slot = -1;
  for (long z = 0, i = 0; z < Z; ++z)
    for (long y = 0; y < Y; ++y)
      for (long x = 0; x < X; ++x, ++i) {
        if (v[i] == 0) continue;
        const long k = find(static_cast<long>(v[i]), last_value, last_slot);
        if (k < 0 || taken[k] >= n[k]) continue;
        if (seen[k]++ != target(k)) continue;
        int32_t* row = picks[k].data_ptr<int32_t>() + 3 * taken[k]++;
        row[0] = static_cast<int32_t>(z), row[1] = static_cast<int32_t>(y), row[2] = static_cast<int32_t>(x);
      }
  for (size_t k = 0; k < K; ++k) {
    if (count[k] == 0) continue;
    ClassLocations l;
    l.count = count[k];
    l.lo = lo[k];
    l.hi = hi[k];
    l.voxels = picks[k];
    out[classes[k]] = std::move(l);
  }
}

}  // namespace

void index_case(CaseVolume& c, long max_samples) {
  c.shape = {c.labels.size(0), c.labels.size(1), c.labels.size(2)};
  c.locations.clear();
  const at::Tensor labels = c.labels.contiguous();
  const long Z = c.shape[0], Y = c.shape[1], X = c.shape[2];
  switch (labels.scalar_type()) {
    case at::kByte: index_labels(labels.data_ptr<uint8_t>(), Z, Y, X, c.classes, max_samples, c.locations); break;
    case at::kChar: index_labels(labels.data_ptr<int8_t>(), Z, Y, X, c.classes, max_samples, c.locations); break;
    case at::kShort: index_labels(labels.data_ptr<int16_t>(), Z, Y, X, c.classes, max_samples, c.locations); break;
    case at::kInt: index_labels(labels.data_ptr<int32_t>(), Z, Y, X, c.classes, max_samples, c.locations); break;
    case at::kLong: index_labels(labels.data_ptr<int64_t>(), Z, Y, X, c.classes, max_samples, c.locations); break;
    default: {
      const at::Tensor as_long = labels.to(at::kLong);
      index_labels(as_long.data_ptr<int64_t>(), Z, Y, X, c.classes, max_samples, c.locations);
    }
  }
}

size_t case_bytes(const CaseVolume& c) {
  return (c.image.defined() ? c.image.nbytes() : 0) + (c.labels.defined() ? c.labels.nbytes() : 0);
}

CaseStore::CaseStore(Load load, size_t budget_bytes) : load_(std::move(load)), budget_(budget_bytes) {}

std::shared_ptr<const CaseVolume> CaseStore::get(size_t i) const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = resident_.find(i);
    if (it != resident_.end()) {
      order_.splice(order_.begin(), order_, it->second.position);
      return it->second.volume;
    }
  }
  auto volume = std::make_shared<const CaseVolume>(load_(i));
  std::lock_guard<std::mutex> lock(mutex_);
  ++loads_;
  auto it = resident_.find(i);
  if (it != resident_.end()) return it->second.volume;  // another thread was faster
  order_.push_front(i);
  const size_t bytes = case_bytes(*volume);
  resident_[i] = Entry{volume, order_.begin(), bytes};
  bytes_ += bytes;
  // Drop the least recently used until under budget; the returned pointers
  // keep cases in use alive, so dropping one only ends the store's hold.
  while (bytes_ > budget_ && order_.size() > 1) {
    const size_t victim = order_.back();
    order_.pop_back();
    bytes_ -= resident_[victim].bytes;
    resident_.erase(victim);
  }
  return volume;
}

size_t CaseStore::resident_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_;
}
size_t CaseStore::resident_cases() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return resident_.size();
}
size_t CaseStore::loads() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return loads_;
}

}  // namespace iris::data
