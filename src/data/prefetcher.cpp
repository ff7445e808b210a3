#include "iris/data/prefetcher.h"

#include <ATen/Parallel.h>

namespace iris::data {

EpisodePrefetcher::EpisodePrefetcher(Producer produce, int workers, int depth)
    : produce_(std::move(produce)), depth_(std::max(1, depth)) {
  try {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  } catch (...) {
    // The destructor will not run: stop the threads already started.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
    throw;
  }
}

EpisodePrefetcher::~EpisodePrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    // Unstarted work is dropped; its futures are never read.
    queue_.clear();
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void EpisodePrefetcher::schedule(long index) {
  if (pending_.count(index)) return;
  auto promise = std::make_shared<std::promise<EpisodeBatch>>();
  pending_[index] = promise->get_future().share();
  queue_.emplace_back(index, promise);
}

void EpisodePrefetcher::work() {
  // Per-thread with OpenMP: the training thread keeps its own count.
  at::set_num_threads(1);
  for (;;) {
    std::pair<long, std::shared_ptr<std::promise<EpisodeBatch>>> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      job.second->set_value(produce_(job.first));
    } catch (...) {
      job.second->set_exception(std::current_exception());
    }
  }
}

EpisodeBatch EpisodePrefetcher::get(long index) {
  if (threads_.empty()) return produce_(index);
  std::shared_future<EpisodeBatch> wanted;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Forget batches before `index` (a jump back or forward after resume).
    for (auto it = pending_.begin(); it != pending_.end();)
      it = it->first < index || it->first >= index + depth_ + 1 ? pending_.erase(it) : std::next(it);
    for (auto it = queue_.begin(); it != queue_.end();)
      it = it->first < index || it->first > index + depth_ ? queue_.erase(it) : std::next(it);
    for (long i = index; i <= index + depth_; ++i) schedule(i);
    wanted = pending_.at(index);
    pending_.erase(index);
  }
  wake_.notify_all();
  return wanted.get();
}

}  // namespace iris::data
