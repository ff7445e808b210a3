#pragma once
// Shared helpers of the inference tests: a tiny seeded model, synthetic and
// real (MRIcron ch2 + AAL) volumes.
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "iris/io/intensity.h"
#include "iris/common/image.h"
#include "iris/io/image_io.h"
#include "iris/model/iris_net.h"
#include "iris/model/model_file.h"
#include "test_support.h"

namespace iris_test {

namespace fs = std::filesystem;

using iris::testing::temp_path;

inline iris::model::IrisNet tiny_net(int seed = 7) {
  torch::manual_seed(seed);
  iris::model::IrisNet net(iris::model::preset("tiny"));
  net->eval();
  return net;
}

// A tiny model saved to `path` (fixed seed), for tests that run iris-infer.
inline std::string save_tiny_model(const std::string& path, int seed = 7) {
  iris::model::IrisModel m;
  m.config = iris::model::preset("tiny");
  m.net = tiny_net(seed);
  m.description = "iris_infer_tests";
  iris::model::save_model(m, path);
  return path;
}

// Image [Z, Y, X] with a bright ball (label 1) and a dimmer box (label 2).
inline std::pair<iris::io::Image, iris::io::Image> ball_and_box(long z, long y, long x, int seed) {
  torch::manual_seed(seed);
  auto rz = torch::arange(z, torch::kFloat).view({z, 1, 1});
  auto ry = torch::arange(y, torch::kFloat).view({1, y, 1});
  auto rx = torch::arange(x, torch::kFloat).view({1, 1, x});
  auto ball = ((rz - z / 2.0).pow(2) + (ry - y / 3.0).pow(2) + (rx - x / 3.0).pow(2)).le(25.0);
  auto box = (rz.ge(2) & rz.lt(z - 2) & ry.ge(2 * y / 3) & ry.lt(2 * y / 3 + 5) & rx.ge(2 * x / 3) & rx.lt(2 * x / 3 + 5))
                 .expand({z, y, x});
  iris::io::Image image, labels;
  image.voxels = (ball.to(torch::kFloat) * 3.0 + box.to(torch::kFloat) * 1.5 + 0.2 * torch::randn({z, y, x})).contiguous();
  labels.voxels = (ball.to(torch::kInt) + box.to(torch::kInt) * 2 * (~ball).to(torch::kInt)).contiguous();
  for (auto* im : {&image, &labels}) im->geometry.size = {x, y, z};
  return {image, labels};
}

// A 4-D probabilities file as iris-infer writes it: [K, Z, Y, X].
inline at::Tensor read_probabilities(const std::string& path) {
  iris::io::ImageReadOptions o;
  o.components = true;
  return iris::io::read_image(path, o).voxels;
}

inline at::Tensor data_volume(const iris::io::Image& image, const std::string& scheme = "zscore") {
  return iris::io::normalise_intensity(image.voxels, scheme);
}

const std::string kTemplates = "/usr/share/mricron/templates";

// MRIcron's ch2 brain and AAL atlas, every 4th voxel (46 x 55 x 46), with the
// AAL labels reduced to the `classes` largest regions (label values kept).
inline std::pair<iris::io::Image, iris::io::Image> small_brain(long classes = 2) {
  using torch::indexing::Slice;
  iris::io::Image image = iris::io::read_image(kTemplates + "/ch2.nii.gz");
  iris::io::Image atlas = iris::io::read_labels(kTemplates + "/aal.nii.gz");
  auto every4 = [](const at::Tensor& t) {
    return t.index({Slice(0, c10::nullopt, 4), Slice(0, c10::nullopt, 4), Slice(0, c10::nullopt, 4)}).contiguous();
  };
  image.voxels = every4(image.voxels);
  atlas.voxels = every4(atlas.voxels);
  auto [values, inverse, counts] = at::_unique2(atlas.voxels.reshape({-1}), true, false, true);
  counts.masked_fill_(values.eq(0), 0);
  at::Tensor top = values.index_select(0, std::get<1>(counts.topk(classes)));
  at::Tensor keep = at::isin(atlas.voxels, top);
  atlas.voxels = at::where(keep, atlas.voxels, at::zeros_like(atlas.voxels));
  for (auto* im : {&image, &atlas}) {
    im->geometry.size = {im->voxels.size(2), im->voxels.size(1), im->voxels.size(0)};
    for (auto& s : im->geometry.spacing) s *= 4;
  }
  return {image, atlas};
}

}  // namespace iris_test
