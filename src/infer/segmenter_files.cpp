// Segmenter::segment_files: a run over many files. A reader thread reads the
// next query and a writer thread writes the last results while the network
// runs on this one (segmenter_state.h).
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include <ATen/core/Tensor.h>

#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/io/dicom_seg.h"
#include "iris/io/image_io.h"
#include "segmenter_state.h"

namespace iris::infer {

namespace {

// A one-slot hand-over between two threads; `close` ends it (with an error
// from the producer, rethrown to the consumer).
template <typename T>
class Handover {
 public:
  // False (and nothing handed over) once the consumer has closed it.
  bool put(T value) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return !full_ || closed_; });
    if (closed_) return false;
    slot_ = std::move(value);
    full_ = true;
    cv_.notify_all();
    return true;
  }
  // The next item; an item handed over before an error still comes first.
  // Then the error is rethrown; false when closed without one.
  bool take(T& out) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return full_ || closed_; });
    if (full_) {
      out = std::move(slot_);
      full_ = false;
      cv_.notify_all();
      return true;
    }
    if (error_) std::rethrow_exception(error_);
    return false;
  }
  void close(std::exception_ptr error = nullptr) {
    std::lock_guard<std::mutex> lock(m_);
    closed_ = true;
    if (error && !error_) error_ = error;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  T slot_{};
  bool full_ = false, closed_ = false;
  std::exception_ptr error_;
};

}  // namespace

void Segmenter::segment_files(const std::vector<QueryJob>& jobs, const QueryReadOptions& read,
                              const std::function<void(const QueryJob&)>& done) {
  State& s = *s_;
  struct Read {
    size_t job = 0;
    Image image;
  };
  struct Written {
    size_t job = 0;
    Segmentation result;
  };
  Handover<Read> to_network;
  Handover<Written> to_writer;

  auto fail = [&](const QueryJob& job, const std::string& why) {
    std::lock_guard<std::mutex> lock(s.report_mutex);
    s.failed.push_back({job.input, job.name.empty() ? case_name(job.input) : job.name, why});
  };
  std::thread reader([&] {
    try {
      for (size_t i = 0; i < jobs.size(); ++i) {
        QueryReadOptions job_read = read;
        if (!jobs[i].series.empty()) job_read.series = jobs[i].series;
        Image image;
        try {
          image = s.read_query(jobs[i].input, job_read);
        } catch (const Error& e) {
          // A damaged series or file: reported, and the others are done
          // (one query alone: its error is the run's).
          if (jobs.size() == 1) throw;
          fail(jobs[i], e.what());
          continue;
        }
        if (!to_network.put({i, std::move(image)})) return;  // the run has stopped
      }
      to_network.close();
    } catch (...) {
      to_network.close(std::current_exception());
    }
  });
  std::thread writer([&] {
    try {
      Written w;
      while (to_writer.take(w)) {
        const QueryJob& job = jobs[w.job];
        const auto t = State::Clock::now();
        io::write_image(w.result.labels, job.output);
        if (!job.dicom_seg.empty()) {
          if (!w.result.labels.voxels.ne(0).any().item<bool>()) {
            // A SEG needs at least one frame; an empty result is still a result.
            s.warn(job.input + ": nothing segmented, so no DICOM-SEG written to " + job.dicom_seg);
          } else {
            io::DicomSegOptions seg;
            for (size_t c = 0; c < w.result.label_values.size() && c < w.result.class_names.size(); ++c)
              if (!w.result.class_names[c].empty()) seg.segment_names[w.result.label_values[c]] = w.result.class_names[c];
            io::write_dicom_seg(job.dicom_seg, w.result.labels, job.input, job.series.empty() ? read.series : job.series,
                                seg);
          }
        }
        if (!job.probabilities.empty() && w.result.probabilities) io::write_image(*w.result.probabilities, job.probabilities);
        s.timings.add("write", t);
        if (done) done(job);
      }
    } catch (...) {
      to_writer.close(std::current_exception());
      to_network.close(std::current_exception());  // stops the reader too
    }
  });

  std::exception_ptr failure;
  try {
    Read r;
    while (to_network.take(r)) {
      const QueryJob& job = jobs[r.job];
      Written w{r.job, {}};
      try {
        w.result = segment(r.image, job.name.empty() ? case_name(job.input) : job.name);
      } catch (const Error& e) {
        if (jobs.size() == 1) throw;
        fail(job, e.what());  // e.g. a volume too small for the model: the others go on
        continue;
      }
      if (!to_writer.put(std::move(w))) break;  // the writer failed
    }
  } catch (...) {
    failure = std::current_exception();
  }
  to_network.close(failure);  // stops the reader
  to_writer.close(failure);   // the writer finishes what it holds, then stops
  reader.join();
  writer.join();
  if (failure) std::rethrow_exception(failure);
  Written unused;
  to_writer.take(unused);  // rethrows the writer's error (a full disk), if any
}

}  // namespace iris::infer
