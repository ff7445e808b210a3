#include "iris/infer/reference.h"

#include <algorithm>
#include <set>

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "iris/common/error.h"
#include "iris/data/intensity.h"
#include "iris/io/image_io.h"
#include "iris/model/iris_net.h"

namespace iris::infer {

std::vector<long> reference_label_values(const io::Image& labels, const std::vector<long>& requested) {
  at::Tensor unique = std::get<0>(at::_unique(labels.voxels.reshape({-1}), /*sorted=*/true));
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

model::TaskEmbedding encode_reference(model::IrisNetImpl& net, const io::Image& image, const io::Image& labels,
                                      const std::vector<long>& label_values, const std::string& intensity,
                                      const c10::Device& device, const std::string& fingerprint) {
  io::check_same_grid(image, labels);
  at::Tensor volume = data::normalise_intensity(image.voxels, intensity);
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
