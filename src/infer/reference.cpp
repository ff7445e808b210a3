#include "iris/infer/reference.h"

#include <algorithm>
#include <set>

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/mask_box.h"
#include "iris/io/intensity.h"
#include "iris/io/image_io.h"
#include "iris/model/iris_net.h"

namespace iris::infer {

std::vector<long> reference_label_values(const Image& labels, const std::vector<long>& requested,
                                         long max_labels) {
  at::Tensor unique = std::get<0>(at::_unique(labels.voxels.reshape({-1}), /*sorted=*/true));
  const long nonzero = unique.numel() - (unique.numel() > 0 && unique[0].item<long>() == 0 ? 1 : 0);
  if (nonzero > max_labels)
    throw InputError(labels.source, "has " + std::to_string(nonzero) + " distinct label values; at most " +
                                   std::to_string(max_labels) +
                                   " are segmented in one run (each becomes a class): is it an image rather than a "
                                   "label map? (" + setting_ref("max_labels") + " raises the limit)");
  std::vector<long> present;
  for (long i = 0; i < unique.numel(); ++i) {
    const long v = unique[i].item<long>();
    if (v != 0) present.push_back(v);
  }
  std::sort(present.begin(), present.end());
  if (requested.empty()) {
    if (present.empty()) throw Error(labels.source, "reference label map is empty (no non-zero voxel)");
    return present;
  }
  std::string missing;
  for (long r : requested)
    if (!std::binary_search(present.begin(), present.end(), r)) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
  if (!missing.empty()) {
    std::string have;
    for (long p : present) have += (have.empty() ? "" : ", ") + std::to_string(p);
    throw Error(labels.source, "label value(s) " + missing + " not present in the reference (present: " +
                                   (have.empty() ? "none" : have) + ")");
  }
  return requested;
}

model::TaskEmbedding encode_reference(model::IrisNetImpl& net, const Image& image, const Image& labels,
                                      const std::vector<long>& label_values, const std::string& intensity,
                                      const c10::Device& device, const std::string& fingerprint,
                                      long classes_per_window) {
  const size_t step = classes_per_window > 0 ? static_cast<size_t>(classes_per_window) : label_values.size();
  if (step > 0 && step < label_values.size()) {
    std::vector<model::TaskEmbedding> groups;
    for (size_t first = 0; first < label_values.size(); first += step) {
      const std::vector<long> group(label_values.begin() + first,
                                    label_values.begin() + std::min(label_values.size(), first + step));
      groups.push_back(encode_reference(net, image, labels, group, intensity, device, fingerprint));
    }
    return model::TaskEmbedding::concat(groups);
  }
  io::check_same_grid(image, labels);
  at::Tensor volume = io::normalise_intensity(image.voxels, intensity);
  std::vector<at::Tensor> masks;
  for (long v : label_values) masks.push_back(labels.voxels.eq(v).to(at::kFloat));
  at::Tensor mask_stack = at::stack(masks);  // [K, Z, Y, X]
  const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
  const auto win = window_shape(size, net.config().max_patch_size);
  volume = pad_to(volume, win);
  mask_stack = pad_to(mask_stack, win);
  const auto start = reference_window_start(mask_stack.amax(0), win);
  using torch::indexing::Slice;
  auto crop = [&](const at::Tensor& t) {
    return t.index({"...", Slice(start[0], start[0] + win[0]), Slice(start[1], start[1] + win[1]),
                    Slice(start[2], start[2] + win[2])});
  };
  at::Tensor ref = crop(volume).unsqueeze(0).unsqueeze(0).to(device);
  at::Tensor m = crop(mask_stack).unsqueeze(0).to(device);
  torch::NoGradGuard no_grad;
  model::TaskEmbedding task = model::encode_task(net, ref, m, fingerprint);
  task.labels = label_values;
  task.names.assign(label_values.size(), "");
  return task.to(c10::Device(c10::kCPU));
}

}  // namespace iris::infer

namespace iris::infer {

namespace {

}  // namespace

MaskedWindow crop_around_masks(const at::Tensor& volume, const at::Tensor& masks, long max_window) {
  if (volume.dim() != 3 || masks.dim() != 4 || masks.sizes().slice(1) != volume.sizes())
    throw Error("masks", "expected volume [Z, Y, X] and masks [K, Z, Y, X] of the same size");
  const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
  const auto win = window_shape(size, max_window);
  at::Tensor v = pad_to(volume.to(at::kFloat), win);
  at::Tensor m = pad_to(masks.to(at::kFloat), win);
  const auto box = mask_box(m.amax(0));
  if (!box) throw Error("reference mask", "is empty: nothing to crop around");
  std::array<long, 3> start{};
  for (int a = 0; a < 3; ++a) {
    const long centred = (box->lo[a] + box->hi[a] + 1) / 2 - win[a] / 2;
    start[a] = std::max<long>(0, std::min(centred, v.size(a) - win[a]));
  }
  using torch::indexing::Slice;
  auto crop = [&](const at::Tensor& t) {
    return t.index({"...", Slice(start[0], start[0] + win[0]), Slice(start[1], start[1] + win[1]),
                    Slice(start[2], start[2] + win[2])});
  };
  return {crop(v).unsqueeze(0).unsqueeze(0).contiguous(), crop(m).unsqueeze(0).contiguous()};
}

model::TaskEmbedding encode_masks(model::IrisNetImpl& net, const at::Tensor& volume, const at::Tensor& masks,
                                  const c10::Device& device, const std::string& fingerprint) {
  const long K = masks.size(0);
  const long window = net.config().max_patch_size;
  const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
  const auto win = window_shape(size, window);
  for (long k = 0; k < K; ++k)
    if (!mask_box(masks[k]))
      throw Error("reference mask", "class #" + std::to_string(k + 1) + " has no voxels: each class needs at least one");
  const MaskBox all = *mask_box(masks.amax(0));
  bool fits = true;
  for (int a = 0; a < 3; ++a) fits = fits && all.extent(a) <= win[a];

  torch::NoGradGuard no_grad;
  auto encode_window = [&](const MaskedWindow& w) {
    return model::encode_task(net, w.image.to(device), w.masks.to(device), fingerprint).to(c10::Device(c10::kCPU));
  };
  model::TaskEmbedding task;
  if (fits || K == 1) {
    task = encode_window(crop_around_masks(volume, masks, window));
  } else {
    // Classes far apart: each gets a window of its own.
    std::vector<model::TaskEmbedding> parts;
    for (long k = 0; k < K; ++k) parts.push_back(encode_window(crop_around_masks(volume, masks.narrow(0, k, 1), window)));
    task = parts[0];
    for (size_t s = 0; s < task.stages.size(); ++s) {
      std::vector<at::Tensor> per_class;
      for (const auto& p : parts) per_class.push_back(p.stages[s]);
      task.stages[s] = at::cat(per_class, 0);
    }
  }
  task.labels.clear();
  for (long k = 0; k < K; ++k) task.labels.push_back(k + 1);
  task.names.assign(K, "");
  return task;
}

}  // namespace iris::infer
