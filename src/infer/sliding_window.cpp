#include "iris/infer/sliding_window.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/common/mask_box.h"
#include "iris/common/internal_error.h"
#include "iris/model/iris_net.h"

namespace iris::infer {

std::array<long, 3> window_shape(const std::array<long, 3>& volume, long window) {
  std::array<long, 3> s{};
  for (int a = 0; a < 3; ++a) s[a] = std::min(window, ((volume[a] + 15) / 16) * 16);
  return s;
}

std::vector<long> window_starts(long size, long w, double overlap) {
  if (size <= w) return {0};
  const long step = std::max<long>(1, static_cast<long>(std::floor(w * (1.0 - overlap))));
  const long n = static_cast<long>(std::ceil(static_cast<double>(size - w) / step)) + 1;
  std::vector<long> starts;
  // Spread n windows evenly so the last one ends exactly at the border.
  for (long i = 0; i < n; ++i)
    starts.push_back(n == 1 ? 0 : static_cast<long>(std::llround(static_cast<double>(i) * (size - w) / (n - 1))));
  return starts;
}

at::Tensor gaussian_importance(const std::array<long, 3>& shape) {
  std::vector<at::Tensor> axes;
  for (int a = 0; a < 3; ++a) {
    const double centre = (shape[a] - 1) / 2.0, sigma = shape[a] / 8.0;
    at::Tensor r = at::arange(shape[a], at::kDouble);
    axes.push_back(at::exp(-(r - centre).pow(2) / (2 * sigma * sigma)));
  }
  at::Tensor g = axes[0].view({-1, 1, 1}) * axes[1].view({1, -1, 1}) * axes[2].view({1, 1, -1});
  g = g / g.max();
  // No zero weights at the border: a voxel covered by one window keeps it.
  return g.clamp_min(1e-3).to(at::kFloat);
}

at::Tensor pad_to(const at::Tensor& x, const std::array<long, 3>& shape, double value) {
  const long n = x.dim();
  std::vector<int64_t> pad;
  for (int a = 2; a >= 0; --a) {
    pad.push_back(0);
    pad.push_back(std::max<long>(0, shape[a] - x.size(n - 3 + a)));
  }
  bool any = false;
  for (auto p : pad) any |= p > 0;
  return any ? at::constant_pad_nd(x, pad, value) : x;
}

std::array<long, 3> reference_window_start(const at::Tensor& mask, const std::array<long, 3>& shape) {
  const auto box = mask_box(mask);
  if (!box) throw Error("reference mask", "is empty");
  std::array<long, 3> start{};
  for (int a = 0; a < 3; ++a) {
    const long l = box->lo[a], h = box->hi[a], size = mask.size(a);
    if (h - l + 1 > shape[a])
      throw Error("reference mask", "extends over " + std::to_string(h - l + 1) + " voxels along axis " +
                                        std::to_string(a) + ", more than the " + std::to_string(shape[a]) +
                                        "-voxel window: resample the reference to a coarser spacing");
    long s = (l + h + 1) / 2 - shape[a] / 2;
    s = std::max<long>(0, std::min(s, std::max<long>(0, size - shape[a])));
    start[a] = s;
  }
  return start;
}

long auto_window_batch(model::IrisNetImpl& net, const model::TaskEmbedding& task, const std::array<long, 3>& shape,
                       const SlidingWindowOptions& o, long limit, double memory_fraction, std::string* why) {
  limit = std::max<long>(1, limit);
  if (!o.device.is_cuda()) {
    if (why) *why = "1 window per call on " + o.device.str() + " (no device memory to size it by)";
    return 1;
  }
  const int index = o.device.has_index() ? o.device.index() : 0;
  const model::TaskEmbedding task_dev = task.to(o.device);
  const at::Tensor window = at::zeros({1, 1, shape[0], shape[1], shape[2]}, at::TensorOptions().device(o.device));
  compat::cuda_empty_cache();
  compat::cuda_reset_peak(index);
  const long long before = compat::cuda_peak_allocated_bytes(index);  // just reset: what is allocated now
  {
    torch::NoGradGuard no_grad;
    model::segment(net, window, task_dev, o.classes_per_pass).sigmoid();
  }
  const long long per_window = std::max<long long>(1, compat::cuda_peak_allocated_bytes(index) - before);
  const double budget = memory_fraction * static_cast<double>(compat::cuda_total_memory(index)) - before;
  const long fits = static_cast<long>(std::max(1.0, std::floor(budget / static_cast<double>(per_window))));
  const long batch = std::min(fits, limit);
  compat::cuda_empty_cache();
  if (why)
    *why = std::to_string(batch) + " window(s) per call: one window takes " +
           std::to_string(per_window / (1024 * 1024)) + " MiB, " + std::to_string(fits) + " fit in " +
           std::to_string(static_cast<int>(memory_fraction * 100)) + "% of " + o.device.str() + "'s memory" +
           (fits > limit ? " (capped at " + std::to_string(limit) + ")" : "");
  return batch;
}

bool stitch_on_device(const SlidingWindowOptions& o, long classes, long long voxels) {
  if (o.stitching == Stitching::host || !o.device.is_cuda()) return false;
  if (o.stitching == Stitching::device) return true;
  // Beside a batch sized by auto_window_batch (75 % of the memory, the
  // models included): at most a tenth of the device's memory, and at most
  // half of what is free now (another process may hold the rest).
  const int index = o.device.has_index() ? o.device.index() : 0;
  const long long bytes = (static_cast<long long>(classes) + 1) * voxels * static_cast<long long>(sizeof(float));
  return bytes <= compat::cuda_total_memory(index) / 10 && bytes <= compat::cuda_free_memory(index) / 2;
}

at::Tensor sliding_window_inference(const at::Tensor& volume, long K, const WindowPredictor& predict,
                                    const SlidingWindowOptions& o) {
  if (volume.dim() != 3) internal_error("sliding_window_inference", "the query must be a 3-D volume [Z, Y, X]");
  if (o.batch < 1) internal_error("sliding_window_inference", "the batch must be sized (>= 1)");
  const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
  const auto win = window_shape(size, o.window);
  at::Tensor padded = pad_to(volume.to(at::kFloat), win);
  const std::array<long, 3> psize{padded.size(0), padded.size(1), padded.size(2)};
  const bool on_device = stitch_on_device(o, K, padded.numel());
  if (o.stitched) o.stitched(on_device);
  const c10::Device stitch = on_device ? o.device : c10::Device(c10::kCPU);
  const auto on_stitch = at::TensorOptions().dtype(at::kFloat).device(stitch);
  at::Tensor sum = at::zeros({K, psize[0], psize[1], psize[2]}, on_stitch);
  at::Tensor weight = at::zeros({psize[0], psize[1], psize[2]}, on_stitch);
  const at::Tensor importance =
      (o.gaussian ? gaussian_importance(win) : at::ones({win[0], win[1], win[2]}, at::kFloat)).to(stitch);
  const at::Tensor importance_dev = importance.to(o.device);

  std::vector<std::array<long, 3>> starts;
  for (long z : window_starts(psize[0], win[0], o.overlap))
    for (long y : window_starts(psize[1], win[1], o.overlap))
      for (long x : window_starts(psize[2], win[2], o.overlap)) starts.push_back({z, y, x});

  // The tensor dims of the mirror axes ([n, 1, z, y, x]).
  std::vector<int64_t> mirror_dims;
  if (o.mirror_tta) {
    for (char a : o.mirror_axes) {
      if (a != 'x' && a != 'y' && a != 'z') internal_error("sliding_window_inference", "mirror axes are x, y, z");
      mirror_dims.push_back(a == 'z' ? 2 : a == 'y' ? 3 : 4);
    }
    if (mirror_dims.empty()) internal_error("sliding_window_inference", "mirror TTA without axes");
  }
  torch::NoGradGuard no_grad;
  using torch::indexing::Slice;
  const long total = static_cast<long>(starts.size());
  for (long first = 0; first < total; first += o.batch) {
    const long n = std::min(o.batch, total - first);
    std::vector<at::Tensor> windows;
    for (long i = 0; i < n; ++i) {
      const auto& s = starts[first + i];
      windows.push_back(padded.index({Slice(s[0], s[0] + win[0]), Slice(s[1], s[1] + win[1]), Slice(s[2], s[2] + win[2])}));
    }
    const at::Tensor batch = at::stack(windows).unsqueeze(1).to(o.device);  // [n, 1, d, h, w]
    at::Tensor probs = predict(batch).to(o.device, at::kFloat);
    if (probs.dim() != 5 || probs.size(0) != n || probs.size(1) != K)
      internal_error("sliding_window_inference", "the predictor must give [n, K, d, h, w] for n windows");
    if (o.mirror_tta) {
      const int subsets = 1 << mirror_dims.size();
      for (int mask = 1; mask < subsets; ++mask) {
        std::vector<int64_t> dims;
        for (size_t a = 0; a < mirror_dims.size(); ++a)
          if (mask & (1 << a)) dims.push_back(mirror_dims[a]);
        probs = probs + predict(batch.flip(dims)).to(o.device, at::kFloat).flip(dims);
      }
      probs = probs / static_cast<double>(subsets);
    }
    probs = (probs * importance_dev).to(stitch);
    for (long i = 0; i < n; ++i) {
      const auto& s = starts[first + i];
      sum.index({Slice(), Slice(s[0], s[0] + win[0]), Slice(s[1], s[1] + win[1]), Slice(s[2], s[2] + win[2])})
          .add_(probs[i]);
      weight.index({Slice(s[0], s[0] + win[0]), Slice(s[1], s[1] + win[1]), Slice(s[2], s[2] + win[2])})
          .add_(importance);
    }
    if (o.progress) o.progress(first + n, total);
  }
  sum.div_(weight.unsqueeze(0));
  return sum.index({Slice(), Slice(0, size[0]), Slice(0, size[1]), Slice(0, size[2])}).to(at::kCPU).contiguous();
}

at::Tensor sliding_window_probabilities(model::IrisNetImpl& net, const at::Tensor& volume,
                                        const model::TaskEmbedding& task, const SlidingWindowOptions& o) {
  if (volume.dim() != 3) internal_error("sliding_window_probabilities", "the query must be a 3-D volume [Z, Y, X]");
  const model::TaskEmbedding task_dev = task.to(o.device);
  SlidingWindowOptions sized = o;
  if (sized.batch <= 0) {  // auto: at most every window in one call
    const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
    const auto win = window_shape(size, o.window);
    long windows = 1;
    for (int a = 0; a < 3; ++a) windows *= static_cast<long>(window_starts(std::max(size[a], win[a]), win[a], o.overlap).size());
    sized.batch = auto_window_batch(net, task_dev, win, o, windows);
  }
  return sliding_window_inference(
      volume, task.num_classes(),
      [&](const at::Tensor& windows) { return model::segment(net, windows, task_dev, o.classes_per_pass).sigmoid(); },
      sized);
}

at::Tensor labels_from_probabilities(const at::Tensor& probabilities, const std::vector<long>& labels,
                                     double threshold) {
  if (probabilities.size(0) != static_cast<long>(labels.size()))
    internal_error("labels_from_probabilities", "one label value per class is needed");
  auto [best, index] = probabilities.max(0);
  at::Tensor values = at::tensor(std::vector<int32_t>(labels.begin(), labels.end()), at::kInt);
  at::Tensor out = values.index_select(0, index.reshape({-1})).view(index.sizes());
  return at::where(best >= threshold, out, at::zeros_like(out));
}

}  // namespace iris::infer
