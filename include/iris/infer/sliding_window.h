#pragma once
// Whole-volume inference with overlapping windows, as MONAI's
// sliding_window_inference: volumes of any size are padded to whole windows,
// any predictor (a callable from windows to class probabilities) segments
// them, and the maps are blended with Gaussian importance weights, on the
// device when they fit there. sliding_window_probabilities is the predictor
// "the IRIS network with one task".
#include <array>
#include <functional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include "iris/model/task_embedding.h"

namespace iris::model {
class IrisNetImpl;
}

namespace iris::infer {

// Where the blended sums live. `automatic`: on the device when it is a GPU
// and the sums (classes + 1 float volumes of the padded query) take at most a
// tenth of its memory and half of its free memory, else in host memory; the
// result is always on the host.
enum class Stitching { automatic, host, device };

struct SlidingWindowOptions {
  long window = 128;        // cubic window edge, voxels (<= the model's max patch)
  double overlap = 0.5;     // fraction of the window shared by neighbours
  bool gaussian = true;     // Gaussian weighting (sigma = window / 8) vs flat
  long batch = 1;           // windows per network call; 0 = auto (auto_window_batch)
  c10::Device device = c10::Device(c10::kCPU);
  // Average over the query flipped along every subset of `mirror_axes`
  // ("x", "xz", "xyz": patient axes of the model space, x = tensor dim 2 of
  // [Z, Y, X]), the same task for each: 2^n passes.
  bool mirror_tta = false;
  std::string mirror_axes;
  long classes_per_pass = 0;  // decode this many classes at a time (0 = all together)
  Stitching stitching = Stitching::automatic;
  // Called after each batch of windows with (done, total), for progress bars.
  std::function<void(long, long)> progress;
  // Called once per volume with where its windows are blended (true: on the device).
  std::function<void(bool)> stitched;
};

// Window edge per axis for a volume: the configured window, shrunk (in steps
// of 16) for axes that are smaller, so small volumes are not over-padded.
std::array<long, 3> window_shape(const std::array<long, 3>& volume, long window);

// --window-batch auto: how many windows of `shape` one network call can take
// on the device, at most `limit`. On a GPU, one window of this task is run
// and its peak memory measured; the batch is what fits in `memory_fraction`
// of the device's memory beside what is allocated already. On the CPU: 1
// (no out-of-memory error to probe with, and a batch is no faster there).
// `why` (optional) gets a line saying how the size was found.
long auto_window_batch(model::IrisNetImpl& net, const model::TaskEmbedding& task, const std::array<long, 3>& shape,
                       const SlidingWindowOptions& options, long limit, double memory_fraction = 0.75,
                       std::string* why = nullptr);

// Start offsets of windows of `w` covering `size` (size >= w) with overlap.
std::vector<long> window_starts(long size, long w, double overlap);

// Separable Gaussian importance map [D, H, W], max 1, sigma = edge / 8.
at::Tensor gaussian_importance(const std::array<long, 3>& shape);

// A batch of windows [n, 1, d, h, w] (float, on options.device) -> their
// class probabilities [n, K, d, h, w] (any float type, on any device).
using WindowPredictor = std::function<at::Tensor(const at::Tensor& windows)>;

// volume [Z, Y, X] (float, CPU) -> probabilities [K, Z, Y, X] (float, CPU),
// `classes` = K, from any predictor; options.batch must be >= 1 (auto is
// the network's: sliding_window_probabilities). With options.mirror_tta the
// predictor also sees the windows mirrored and its outputs are flipped back
// and averaged.
at::Tensor sliding_window_inference(const at::Tensor& volume, long classes, const WindowPredictor& predictor,
                                    const SlidingWindowOptions& options);

// Whether the sums of a padded volume of `voxels` and `classes` are kept on
// options.device (Stitching::automatic decided as above).
bool stitch_on_device(const SlidingWindowOptions& options, long classes, long long voxels);

// The IRIS network with one task as the predictor (sigmoid of its logits).
at::Tensor sliding_window_probabilities(model::IrisNetImpl& net, const at::Tensor& volume,
                                        const model::TaskEmbedding& task, const SlidingWindowOptions& options);

// Reference crop: a window of `shape` inside `volume_size` centred on the
// bounding box of all masks, so the reference keeps its mask. Returns start
// offsets; iris::Error if the bounding box does not fit in the window.
std::array<long, 3> reference_window_start(const at::Tensor& any_mask, const std::array<long, 3>& shape);

// Pads [..., Z, Y, X] at the far end with `value` up to at least `shape`.
at::Tensor pad_to(const at::Tensor& x, const std::array<long, 3>& shape, double value = 0.0);

// Label map [Z, Y, X] int32: each voxel gets the label of its most probable
// class when that probability is >= threshold, else 0.
at::Tensor labels_from_probabilities(const at::Tensor& probabilities, const std::vector<long>& labels,
                                     double threshold = 0.5);

}  // namespace iris::infer
