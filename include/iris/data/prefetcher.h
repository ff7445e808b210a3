#pragma once
// Samples episode batches ahead of the training step on worker threads, so
// the accelerator does not wait for augmentation. Batches are a pure
// function of their index (EpisodeSampler is deterministic per episode), so
// the stream is the same with any number of workers, including none.
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "iris/data/episodes.h"

namespace iris::data {

class EpisodePrefetcher {
 public:
  using Producer = std::function<EpisodeBatch(long index)>;

  // `workers` 0: get() samples on the calling thread. Otherwise up to
  // `depth` batches after the requested one are prepared in the background.
  // Each worker runs tensor ops with one intra-op thread: the cores belong to
  // the training step. (at::set_num_threads(1) in a worker also becomes the
  // default of threads that start later; the trainer's thread has set its
  // own count before.)
  EpisodePrefetcher(Producer produce, int workers, int depth);
  ~EpisodePrefetcher();
  EpisodePrefetcher(const EpisodePrefetcher&) = delete;
  EpisodePrefetcher& operator=(const EpisodePrefetcher&) = delete;

  // The batch of `index`. Requests are expected in increasing order; a jump
  // (e.g. after resume) discards what was prepared. Errors thrown by the
  // producer are re-thrown here.
  EpisodeBatch get(long index);

  int workers() const { return static_cast<int>(threads_.size()); }

 private:
  void schedule(long index);  // caller holds mutex_
  void work();

  Producer produce_;
  int depth_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<long, std::shared_ptr<std::promise<EpisodeBatch>>>> queue_;
  std::map<long, std::shared_future<EpisodeBatch>> pending_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace iris::data
