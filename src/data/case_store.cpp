#include "iris/data/case_store.h"

#include <ATen/ATen.h>

#include "iris/common/mask_box.h"

namespace iris::data {

void index_case(CaseVolume& c, long max_samples) {
  c.shape = {c.labels.size(0), c.labels.size(1), c.labels.size(2)};
  c.locations.clear();
  for (long value : c.classes) {
    const at::Tensor mask = c.labels.eq(value);
    ClassLocations l;
    const at::Tensor all = at::nonzero(mask);  // [N, 3] in raster order
    l.count = all.size(0);
    if (l.count == 0) continue;
    const auto box = mask_box(mask);
    l.lo = box->lo;
    l.hi = box->hi;
    if (l.count <= max_samples) {
      l.voxels = all.to(at::kInt).contiguous();
    } else {
      // Evenly spread over the raster order: every part of the class.
      const at::Tensor pick = at::linspace(0, static_cast<double>(l.count - 1), max_samples, at::kDouble).round().to(at::kLong);
      l.voxels = all.index_select(0, pick).to(at::kInt).contiguous();
    }
    c.locations[value] = std::move(l);
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
