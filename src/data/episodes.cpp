#include "iris/data/episodes.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "iris/common/error.h"

namespace iris::data {
namespace {

using Rng = std::mt19937_64;

double uniform(Rng& r, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(r); }
bool chance(Rng& r, double p) { return uniform(r, 0, 1) < p; }

std::array<double, 9> random_affine(Rng& r, const AugmentOptions& a) {
  if (!a.enabled) return {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const double s = uniform(r, a.scale_min, a.scale_max);
  const double deg = M_PI / 180.0;
  const double ax = uniform(r, -a.rotation_degrees, a.rotation_degrees) * deg;
  const double ay = uniform(r, -a.rotation_degrees, a.rotation_degrees) * deg;
  const double az = uniform(r, -a.rotation_degrees, a.rotation_degrees) * deg;
  // R = Rz * Ry * Rx, scaled.
  const double cx = std::cos(ax), sx = std::sin(ax), cy = std::cos(ay), sy = std::sin(ay), cz = std::cos(az),
               sz = std::sin(az);
  std::array<double, 9> m{cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
                          sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
                          -sy,     cy * sx,                cy * cx};
  for (auto& v : m) v *= s;
  return m;
}

std::array<double, 3> random_voxel_of(const at::Tensor& mask, Rng& r) {
  at::Tensor nz = at::nonzero(mask);
  if (nz.size(0) == 0) return {mask.size(0) / 2.0, mask.size(1) / 2.0, mask.size(2) / 2.0};
  const long i = std::uniform_int_distribution<long>(0, nz.size(0) - 1)(r);
  return {static_cast<double>(nz[i][0].item<long>()), static_cast<double>(nz[i][1].item<long>()),
          static_cast<double>(nz[i][2].item<long>())};
}

std::array<double, 3> bbox_centre(const at::Tensor& mask) {
  at::Tensor nz = at::nonzero(mask);
  if (nz.size(0) == 0) return {mask.size(0) / 2.0, mask.size(1) / 2.0, mask.size(2) / 2.0};
  at::Tensor lo = std::get<0>(nz.min(0)).to(at::kDouble), hi = std::get<0>(nz.max(0)).to(at::kDouble);
  at::Tensor c = (lo + hi) / 2;
  return {c[0].item<double>(), c[1].item<double>(), c[2].item<double>()};
}

at::Tensor gaussian_blur(const at::Tensor& x, double sigma) {
  const long radius = static_cast<long>(std::ceil(2.5 * sigma));
  at::Tensor r = at::arange(-radius, radius + 1, at::kFloat);
  at::Tensor k = at::exp(-r.pow(2) / (2 * sigma * sigma));
  k = k / k.sum();
  at::Tensor y = x.unsqueeze(0).unsqueeze(0);  // [1, 1, D, H, W]
  y = at::conv3d(y, k.view({1, 1, -1, 1, 1}), {}, 1, {radius, 0, 0});
  y = at::conv3d(y, k.view({1, 1, 1, -1, 1}), {}, 1, {0, radius, 0});
  y = at::conv3d(y, k.view({1, 1, 1, 1, -1}), {}, 1, {0, 0, radius});
  return y.squeeze(0).squeeze(0);
}

at::Tensor augment_intensity(at::Tensor x, Rng& r, const AugmentOptions& a, at::Generator& gen) {
  if (!a.enabled) return x;
  const double p = a.intensity_probability;
  if (chance(r, a.blur_probability)) x = gaussian_blur(x, uniform(r, a.blur_sigma_min, a.blur_sigma_max));
  if (chance(r, p)) x = x * uniform(r, a.brightness_min, a.brightness_max) + at::normal(0.0, a.brightness_shift_std, {1}, gen).item<double>();
  if (chance(r, p)) {
    const double mean = x.mean().item<double>();
    x = (x - mean) * uniform(r, a.contrast_min, a.contrast_max) + mean;
  }
  if (chance(r, p)) {
    // Gamma on the [0, 1]-rescaled patch, then back to its range.
    const double lo = x.min().item<double>(), hi = x.max().item<double>();
    if (hi > lo) x = ((x - lo) / (hi - lo)).pow(uniform(r, a.gamma_min, a.gamma_max)) * (hi - lo) + lo;
  }
  if (chance(r, p)) x = x + at::normal(0.0, 1.0, x.sizes(), gen) * uniform(r, 0.0, a.noise_std_max);
  return x;
}

at::Tensor perturb_masks(const at::Tensor& masks, Rng& r) {
  // Simulate imperfect references: dilate or erode by one voxel.
  at::Tensor m = masks.unsqueeze(0);
  m = chance(r, 0.5) ? at::max_pool3d(m, 3, 1, 1) : 1 - at::max_pool3d(1 - m, 3, 1, 1);
  return m.squeeze(0);
}

}  // namespace

std::vector<LoadedDataset> load_datasets(const std::vector<DatasetSpec>& specs, const std::string& subset,
                                         const CaseLoader& loader) {
  std::vector<std::string> table = class_table(specs);
  std::vector<LoadedDataset> out;
  for (const auto& spec : specs) {
    const auto& cases = subset == "train" ? spec.train : subset == "val" ? spec.val : spec.test;
    if (cases.empty()) continue;
    LoadedDataset d;
    d.name = spec.name;
    d.weight = spec.weight;
    for (const auto& [value, name] : spec.class_names)
      d.class_ids[value] = std::find(table.begin(), table.end(), name) - table.begin();
    for (const auto& c : cases) {
      CaseVolume v = loader(spec, c);
      v.dataset = spec.name;
      // A dataset without a class table: every label value is a class.
      for (long value : v.classes)
        if (!d.class_ids.count(value)) d.class_ids[value] = -1;
      d.cases.push_back(std::move(v));
    }
    out.push_back(std::move(d));
  }
  return out;
}

EpisodeSampler::EpisodeSampler(std::vector<LoadedDataset> datasets, EpisodeOptions options, uint64_t seed, int rank)
    : datasets_(std::move(datasets)), options_(std::move(options)), seed_(seed), rank_(rank) {
  if (datasets_.empty()) throw Error("data", "no dataset has training cases");
  for (const auto& d : datasets_)
    if (d.cases.empty()) throw Error("data.datasets." + d.name, "has no cases");
  if (options_.patch % 16 != 0) throw Error("train.patch", "must be a multiple of 16");
}

at::Tensor sample_patch(const at::Tensor& volume, const std::array<double, 3>& centre,
                        const std::array<double, 9>& m, long P) {
  // Patch voxel offsets from the patch centre, [P^3, 3] in (z, y, x).
  at::Tensor r = at::arange(P, at::kFloat) - (P - 1) / 2.0f;
  auto grids = at::meshgrid({r, r, r}, "ij");
  at::Tensor offsets = at::stack({grids[0], grids[1], grids[2]}, -1).view({-1, 3});
  at::Tensor mat = at::tensor(std::vector<float>(m.begin(), m.end()), at::kFloat).view({3, 3});
  at::Tensor pos = offsets.matmul(mat.t()) + at::tensor({(float)centre[0], (float)centre[1], (float)centre[2]});
  // grid_sample wants (x, y, z) normalised to [-1, 1] with align_corners=true.
  const long Z = volume.size(1), Y = volume.size(2), X = volume.size(3);
  at::Tensor nz = pos.select(1, 0) * (2.0 / std::max<long>(1, Z - 1)) - 1;
  at::Tensor ny = pos.select(1, 1) * (2.0 / std::max<long>(1, Y - 1)) - 1;
  at::Tensor nx = pos.select(1, 2) * (2.0 / std::max<long>(1, X - 1)) - 1;
  at::Tensor grid = at::stack({nx, ny, nz}, -1).view({1, P, P, P, 3});
  return at::grid_sampler(volume.unsqueeze(0).to(at::kFloat), grid, /*bilinear*/ 0, /*zeros*/ 0, true).squeeze(0);
}

EpisodeBatch EpisodeSampler::sample(long index, long batch_size) const {
  const long P = options_.patch, K = options_.max_classes;
  EpisodeBatch b;
  b.query = at::zeros({batch_size, 1, P, P, P});
  b.reference = at::zeros({batch_size, 1, P, P, P});
  b.query_masks = at::zeros({batch_size, K, P, P, P});
  b.reference_masks = at::zeros({batch_size, K, P, P, P});
  b.class_ids = at::full({batch_size, K}, -1, at::kLong);
  b.valid = at::zeros({batch_size, K});
  std::vector<double> weights;
  for (const auto& d : datasets_) weights.push_back(d.weight);

  for (long item = 0; item < batch_size; ++item) {
    const uint64_t episode = static_cast<uint64_t>(index) * static_cast<uint64_t>(batch_size) + item;
    Rng r(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(rank_) * 0xBF58476D1CE4E5B9ULL + episode * 0x94D049BB133111EBULL + 1);
    at::Generator gen = at::detail::createCPUGenerator(r());
    const auto& d = datasets_[std::discrete_distribution<size_t>(weights.begin(), weights.end())(r)];
    const size_t qi = std::uniform_int_distribution<size_t>(0, d.cases.size() - 1)(r);
    size_t ri = qi;
    if (d.cases.size() > 1)
      while (ri == qi) ri = std::uniform_int_distribution<size_t>(0, d.cases.size() - 1)(r);
    const CaseVolume& q = d.cases[qi];
    const CaseVolume& ref = d.cases[ri];
    std::vector<long> shared;
    for (long c : q.classes)
      if (std::find(ref.classes.begin(), ref.classes.end(), c) != ref.classes.end()) shared.push_back(c);
    if (shared.empty()) continue;  // leaves this item all padding
    std::shuffle(shared.begin(), shared.end(), r);
    // Random class dropping: keep between 1 and K of the shared classes.
    const long k = std::uniform_int_distribution<long>(1, std::min<long>(K, shared.size()))(r);
    shared.resize(k);

    auto stack_masks = [&](const CaseVolume& v) {
      std::vector<at::Tensor> m;
      for (long c : shared) m.push_back(v.labels.eq(c).to(at::kFloat));
      return at::stack(m);
    };
    at::Tensor qm = stack_masks(q), rm = stack_masks(ref);

    // Query crop: around a foreground voxel (oversampling) or anywhere.
    std::array<double, 3> qc;
    if (chance(r, options_.foreground_oversample)) {
      qc = random_voxel_of(qm[std::uniform_int_distribution<long>(0, k - 1)(r)], r);
      // Offset in volume voxels, before the patch's rotation and scale.
      const double spread = options_.foreground_spread * (P - 1) / 2.0;
      if (spread > 0)
        for (auto& c : qc) c += uniform(r, -spread, spread);
    } else {
      qc = {uniform(r, 0, q.image.size(0) - 1), uniform(r, 0, q.image.size(1) - 1), uniform(r, 0, q.image.size(2) - 1)};
    }
    // Reference crop: centred on all its masks (plus jitter) so it keeps them.
    std::array<double, 3> rc = bbox_centre(rm.amax(0));
    const double jitter = options_.augment.enabled ? options_.augment.translation_fraction * P : 0.0;
    for (auto& c : rc) c += uniform(r, -jitter, jitter);

    const auto qa = random_affine(r, options_.augment), ra = random_affine(r, options_.augment);
    at::Tensor q_patch = sample_patch(at::cat({q.image.unsqueeze(0), qm}), qc, qa, P);
    at::Tensor r_patch = sample_patch(at::cat({ref.image.unsqueeze(0), rm}), rc, ra, P);
    at::Tensor q_masks = q_patch.slice(0, 1).gt(0.5).to(at::kFloat);
    at::Tensor r_masks = r_patch.slice(0, 1).gt(0.5).to(at::kFloat);
    if (chance(r, options_.perturb_reference)) r_masks = perturb_masks(r_masks, r);

    b.query[item][0].copy_(augment_intensity(q_patch[0], r, options_.augment, gen));
    b.reference[item][0].copy_(augment_intensity(r_patch[0], r, options_.augment, gen));
    for (long j = 0; j < k; ++j) {
      // A class the reference crop lost cannot be a task.
      if (r_masks[j].sum().item<double>() < 1) continue;
      b.query_masks[item][j].copy_(q_masks[j]);
      b.reference_masks[item][j].copy_(r_masks[j]);
      b.valid[item][j] = 1;
      auto it = d.class_ids.find(shared[j]);
      b.class_ids[item][j] = it == d.class_ids.end() ? -1 : it->second;
    }
  }
  return b;
}

}  // namespace iris::data
