#include "iris/data/episodes.h"

#include <algorithm>
#include <thread>
#include <map>
#include <mutex>
#include <atomic>
#include <cmath>
#include <random>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "iris/common/error.h"
#include "iris/common/label_list.h"
#include "iris/common/mask_box.h"

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

// The query patch [C, Z, Y, X] mirrored along each of `axes` with
// probability 0.5 (nothing drawn when there are none).
at::Tensor mirror_randomly(at::Tensor patch, Rng& r, const AugmentOptions& a) {
  if (!a.enabled || a.mirror_axes.empty()) return patch;
  std::vector<int64_t> dims;
  for (char axis : a.mirror_axes)
    if (chance(r, 0.5)) dims.push_back(axis == 'z' ? 1 : axis == 'y' ? 2 : 3);
  return dims.empty() ? patch : patch.flip(dims);
}

// A voxel of the union of `values`, uniform over its voxels (through each
// class's sampled locations); the middle of the case when none is there.
std::array<double, 3> random_location(const CaseVolume& c, const std::vector<long>& values, Rng& r) {
  long total = 0;
  for (long v : values)
    if (auto it = c.locations.find(v); it != c.locations.end()) total += it->second.count;
  if (total == 0) return {c.shape[0] / 2.0, c.shape[1] / 2.0, c.shape[2] / 2.0};
  long pick = std::uniform_int_distribution<long>(0, total - 1)(r);
  for (long v : values) {
    auto it = c.locations.find(v);
    if (it == c.locations.end()) continue;
    if (pick >= it->second.count) {
      pick -= it->second.count;
      continue;
    }
    const at::Tensor& voxels = it->second.voxels;
    const long i = std::uniform_int_distribution<long>(0, voxels.size(0) - 1)(r);
    const int32_t* row = voxels.data_ptr<int32_t>() + 3 * i;
    return {static_cast<double>(row[0]), static_cast<double>(row[1]), static_cast<double>(row[2])};
  }
  return {c.shape[0] / 2.0, c.shape[1] / 2.0, c.shape[2] / 2.0};
}

// The centre of the box around the union of `values`; the volume's centre when none is there.
std::array<double, 3> box_centre(const CaseVolume& c, const std::vector<long>& values) {
  std::array<long, 3> lo{}, hi{};
  bool any = false;
  for (long v : values) {
    auto it = c.locations.find(v);
    if (it == c.locations.end()) continue;
    for (int a = 0; a < 3; ++a) {
      lo[a] = any ? std::min(lo[a], it->second.lo[a]) : it->second.lo[a];
      hi[a] = any ? std::max(hi[a], it->second.hi[a]) : it->second.hi[a];
    }
    any = true;
  }
  if (!any) return {c.shape[0] / 2.0, c.shape[1] / 2.0, c.shape[2] / 2.0};
  return {(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, (lo[2] + hi[2]) / 2.0};
}

// The voxels a patch around `centre` through `m` (plus a displacement of at
// most `displacement` voxels) can read, with one voxel more for the linear
// interpolation, clipped to the volume: the episode crops to this before it
// builds any mask, so its cost does not grow with the volume.
struct Footprint {
  std::array<long, 3> lo{}, hi{};
  bool empty = false;
};
Footprint footprint(const std::array<long, 3>& shape, const std::array<double, 3>& centre, const std::array<double, 9>& m,
                    long P, double displacement) {
  Footprint f;
  for (int a = 0; a < 3; ++a) {
    const double extent = (P - 1) / 2.0 * (std::abs(m[a * 3]) + std::abs(m[a * 3 + 1]) + std::abs(m[a * 3 + 2])) +
                          displacement + 1.0;
    f.lo[a] = std::max<long>(0, static_cast<long>(std::floor(centre[a] - extent)));
    f.hi[a] = std::min<long>(shape[a] - 1, static_cast<long>(std::ceil(centre[a] + extent)));
    if (f.lo[a] > f.hi[a]) f.empty = true;
  }
  return f;
}

at::Tensor crop(const at::Tensor& t, const Footprint& f) {
  const long n = t.dim();
  return t.slice(n - 3, f.lo[0], f.hi[0] + 1).slice(n - 2, f.lo[1], f.hi[1] + 1).slice(n - 1, f.lo[2], f.hi[2] + 1);
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

// A smooth random displacement field over a P^3 patch, [P^3, 3] voxels (z y x):
// N(0, 1) on a 4^3 lattice scaled so its largest value is `amplitude`,
// trilinearly interpolated.
at::Tensor smooth_displacement(long P, double amplitude, at::Generator& gen) {
  if (amplitude <= 0) return {};
  at::Tensor lattice = at::normal(0.0, 1.0, {1, 3, 4, 4, 4}, gen);
  lattice = lattice * (amplitude / std::max(1e-6, lattice.abs().max().item<double>()));
  at::Tensor field = at::upsample_trilinear3d(lattice, {P, P, P}, true);  // [1, 3, P, P, P]
  return field[0].permute({1, 2, 3, 0}).reshape({-1, 3});
}

at::Tensor perturb_masks(const at::Tensor& masks, Rng& r) {
  // Simulate imperfect references: dilate or erode by one voxel.
  at::Tensor m = masks.unsqueeze(0);
  m = chance(r, 0.5) ? at::max_pool3d(m, 3, 1, 1) : 1 - at::max_pool3d(1 - m, 3, 1, 1);
  return m.squeeze(0);
}

// Labels in the smallest integer type, without a pass over labels that are
// already 8- or 16-bit (mapped cache files: that pass would touch every page).
at::Tensor narrow_wide_labels(const at::Tensor& labels) {
  if (!labels.defined() || labels.scalar_type() == at::kByte || labels.scalar_type() == at::kShort) return labels;
  return narrow_labels(labels);
}

}  // namespace

std::vector<long> regions_inside(const at::Tensor& labels, const at::Tensor& anatomy, const std::vector<long>& values,
                                 double fraction) {
  if (labels.sizes() != anatomy.sizes()) throw Error("held_out_anatomy", "label maps of different shapes");
  const at::Tensor flat = labels.reshape({-1}).to(at::kLong).clamp_min(0);
  const at::Tensor a = anatomy.reshape({-1}).to(at::kLong);
  at::Tensor inside = at::zeros_like(a, at::kBool);
  for (long v : values) inside.logical_or_(a == v);
  const long n = flat.numel() ? flat.max().item<long>() + 1 : 1;
  const at::Tensor total = at::bincount(flat, {}, n), on = at::bincount(flat.masked_select(inside), {}, n);
  std::vector<long> out;
  for (long v = 1; v < n; ++v) {
    const long t = total[v].item<long>();
    if (t > 0 && static_cast<double>(on[v].item<long>()) >= fraction * static_cast<double>(t)) out.push_back(v);
  }
  return out;
}

std::vector<LoadedDataset> load_datasets(const std::vector<DatasetSpec>& specs, const std::string& subset,
                                         const CaseLoader& loader, const LoadOptions& options) {
  std::vector<std::string> table = class_table(specs);
  std::vector<LoadedDataset> out;
  long total = 0, done = 0;
  for (const auto& spec : specs)
    total += static_cast<long>((subset == "train" ? spec.train : subset == "val" ? spec.val : spec.test).size());
  const bool on_demand = options.memory_budget_bytes > 0;
  // One budget for every dataset of the list: each store gets its share.
  std::vector<const DatasetSpec*> used;
  for (const auto& spec : specs)
    if (!(subset == "train" ? spec.train : subset == "val" ? spec.val : spec.test).empty()) used.push_back(&spec);
  std::mutex progress_mutex;
  for (const DatasetSpec* sp : used) {
    const DatasetSpec& spec = *sp;
    const auto& cases = subset == "train" ? spec.train : subset == "val" ? spec.val : spec.test;
    LoadedDataset d;
    d.name = spec.name;
    d.weight = spec.weight;
    d.regions = spec.regions;
    for (const auto& [value, name] : spec.class_names)
      d.class_ids[value] = std::find(table.begin(), table.end(), name) - table.begin();
    d.cases.resize(cases.size());
    const bool by_anatomy = spec.regions.enabled && !spec.regions.held_out_anatomy.empty();
    if (by_anatomy) d.held_out_by_anatomy.resize(cases.size());
    // Cases are read (and a cold cache filled) by `threads` workers taking
    // the next case in turn; with a budget each keeps only its description.
    std::atomic<size_t> next{0};
    std::exception_ptr failure;
    auto work = [&] {
      for (size_t i = next++; i < cases.size() && !failure; i = next++) {
        try {
          CaseVolume v = loader(spec, cases[i]);
          v.dataset = spec.name;
          v.labels = narrow_wide_labels(v.labels);
          index_case(v);
          if (by_anatomy) {
            // The anatomy map read as the case's labels, through the same
            // loader: the same image, so the same preprocessed grid.
            CaseSpec a = cases[i];
            a.name += "__held_out_anatomy";
            a.labels = spec.regions.held_out_anatomy;
            const CaseVolume anatomy = loader(spec, a);
            if (anatomy.labels.sizes() != v.labels.sizes())
              throw Error(spec.regions.held_out_anatomy, "is not on the grid of case '" + cases[i].name + "' (" +
                                                            cases[i].labels + ")");
            d.held_out_by_anatomy[i] = regions_inside(v.labels, anatomy.labels, spec.regions.held_out_anatomy_values,
                                                      spec.regions.held_out_anatomy_fraction);
          }
          if (on_demand) {
            v.image = at::Tensor();
            v.labels = at::Tensor();
          }
          d.cases[i] = std::move(v);
        } catch (...) {
          std::lock_guard<std::mutex> lock(progress_mutex);
          if (!failure) failure = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(progress_mutex);
        ++done;
        if (options.progress) options.progress(done, total);
      }
    };
    std::vector<std::thread> workers;
    const int n = std::max(1, std::min<int>(options.threads, static_cast<int>(cases.size())));
    for (int t = 1; t < n; ++t) workers.emplace_back(work);
    work();
    for (auto& w : workers) w.join();
    if (failure) std::rethrow_exception(failure);
    // A dataset without a class table: every label value is a class.
    for (const auto& v : d.cases)
      for (long value : v.classes)
        if (!d.class_ids.count(value)) d.class_ids[value] = -1;
    if (on_demand) {
      const DatasetSpec spec_copy = spec;
      d.store = std::make_shared<CaseStore>(
          [loader, spec_copy, cases](size_t i) {
            CaseVolume v = loader(spec_copy, cases[i]);
            v.labels = narrow_wide_labels(v.labels);
            return v;
          },
          options.memory_budget_bytes / used.size());
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::shared_ptr<const CaseVolume> EpisodeSampler::case_at(size_t dataset, size_t case_index) const {
  const LoadedDataset& d = datasets_[dataset];
  if (d.store) {
    auto volume = d.store->get(case_index);
    // The description (locations) stays with the dataset; the store brings the voxels.
    auto merged = std::make_shared<CaseVolume>(d.cases[case_index]);
    merged->image = volume->image;
    merged->labels = volume->labels;
    return merged;
  }
  return std::shared_ptr<const CaseVolume>(std::shared_ptr<const CaseVolume>(), &d.cases[case_index]);
}

EpisodeSampler::EpisodeSampler(std::vector<LoadedDataset> datasets, EpisodeOptions options, uint64_t seed, int rank)
    : datasets_(std::move(datasets)), options_(std::move(options)), seed_(seed), rank_(rank) {
  if (datasets_.empty()) throw Error("data", "no dataset has training cases");
  for (const auto& d : datasets_)
    if (d.cases.empty()) throw Error("data.datasets." + d.name, "has no cases");
  if (options_.patch % 16 != 0) throw Error("train.patch", "must be a multiple of 16");
  // Cases built in memory by a caller (not by load_datasets) get their index here.
  for (auto& d : datasets_)
    if (!d.store)
      for (auto& c : d.cases)
        if (c.labels.defined() && (c.locations.empty() || c.shape[0] == 0)) index_case(c);
  regions_.resize(datasets_.size());
  for (size_t di = 0; di < datasets_.size(); ++di) {
    const LoadedDataset& d = datasets_[di];
    if (!d.regions.enabled) continue;
    for (size_t ci = 0; ci < d.cases.size(); ++ci) {
      const auto held = case_at(di, ci);
      const CaseVolume& c = *held;
      RegionIndex index;
      const at::Tensor labels = c.labels.to(at::kLong);
      std::set<long> held_out(d.regions.held_out.begin(), d.regions.held_out.end());
      if (ci < d.held_out_by_anatomy.size()) held_out.insert(d.held_out_by_anatomy[ci].begin(), d.held_out_by_anatomy[ci].end());
      const at::Tensor flat = labels.reshape({-1});
      const at::Tensor counts = at::bincount(flat.clamp_min(0));
      for (long v = 1; v < counts.size(0); ++v)
        if (counts[v].item<long>() >= d.regions.min_voxels && !held_out.count(v)) index.regions.push_back(v);
      const std::set<long> usable(index.regions.begin(), index.regions.end());
      // Touching regions: neighbours along each axis with different non-zero labels.
      for (int axis = 0; axis < 3; ++axis) {
        const long n = labels.size(axis);
        if (n < 2) continue;
        const at::Tensor a = labels.narrow(axis, 0, n - 1).reshape({-1}), b = labels.narrow(axis, 1, n - 1).reshape({-1});
        const at::Tensor touch = (a != b) & (a > 0) & (b > 0);
        const at::Tensor pairs = std::get<0>(at::unique_dim(at::stack({a.masked_select(touch), b.masked_select(touch)}, 1), 0));
        for (long i = 0; i < pairs.size(0); ++i) {
          const long x = pairs[i][0].item<long>(), y = pairs[i][1].item<long>();
          if (!usable.count(x) || !usable.count(y)) continue;
          for (auto [from, to] : {std::make_pair(x, y), std::make_pair(y, x)}) {
            auto& list = index.neighbours[from];
            if (std::find(list.begin(), list.end(), to) == list.end()) list.push_back(to);
          }
        }
      }
      // Regions of the generated image: every label value (held-out ones too:
      // they are image content, just never a task), and where the map has no
      // label, four intensity bands of the real image (background: index 0).
      at::Tensor codes = flat.clone();
      const at::Tensor image = c.image.reshape({-1});
      const double low = image.min().item<double>(), high = image.max().item<double>();
      if (high > low) {
        const at::Tensor band = ((image - low) / (high - low) * 4).floor().clamp(0, 3).to(at::kLong);
        const at::Tensor head = image > low + 0.05 * (high - low);
        const long offset = counts.size(0) + 1;
        codes = at::where((flat == 0) & head, band + offset, codes);
      }
      at::Tensor unique, inverse;
      std::tie(unique, inverse, std::ignore) = at::_unique2(codes, true, true);
      // Index 0 must be the background (code 0) when present.
      index.synth_regions = unique.size(0);
      index.synth_index = inverse.reshape(labels.sizes());
      if (unique[0].item<long>() != 0) index.synth_index = index.synth_index + 1, ++index.synth_regions;
      index.synth_index = narrow_labels(index.synth_index, index.synth_regions);
      regions_[di].push_back(std::move(index));
    }
  }
}

at::Tensor synthesize_image(const at::Tensor& index, long regions, uint64_t seed, const SynthOptions& o,
                            std::vector<double>* means_out) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor means = at::rand({regions}, gen, at::kDouble);
  at::Tensor stds = at::rand({regions}, gen, at::kDouble) * o.std_max;
  means[0] = 0;
  stds[0] = 0;
  const at::Tensor idx = index.to(at::kLong);
  at::Tensor x = means.index_select(0, idx.reshape({-1})).view(idx.sizes()) +
                 stds.index_select(0, idx.reshape({-1})).view(idx.sizes()) * at::normal(0.0, 1.0, idx.sizes(), gen, at::kDouble);
  x = x.to(at::kFloat);
  if (o.bias_field) {
    at::Tensor lattice = at::normal(0.0, 0.3, {1, 1, 4, 4, 4}, gen).to(at::kFloat);
    x = x * at::upsample_trilinear3d(lattice, {idx.size(0), idx.size(1), idx.size(2)}, true)[0][0].exp();
  }
  if (o.blur_sigma_max > 0) {
    const double sigma = at::rand({1}, gen).item<double>() * o.blur_sigma_max;
    if (sigma > 0.3) x = gaussian_blur(x, sigma);
  }
  if (o.noise_std_max > 0) x = x + at::normal(0.0, 1.0, x.sizes(), gen) * (at::rand({1}, gen).item<double>() * o.noise_std_max);
  const at::Tensor foreground = idx > 0;
  if (foreground.any().item<bool>()) {
    const at::Tensor v = x.masked_select(foreground);
    x = (x - v.mean()) / v.std().clamp_min(1e-6);
    x.masked_fill_(~foreground, (-v.mean() / v.std().clamp_min(1e-6)).item<double>());
  }
  if (means_out) {
    means_out->clear();
    for (long i = 0; i < regions; ++i) means_out->push_back(means[i].item<double>());
  }
  return x;
}

namespace {

// Patch voxel offsets from the patch centre, [P^3, 3] in (z, y, x), made
// once per patch size and shared (read-only) by every loader thread.
const at::Tensor& patch_offsets(long P) {
  static std::mutex mutex;
  static std::map<long, at::Tensor> made;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = made.find(P);
  if (it == made.end()) {
    at::Tensor r = at::arange(P, at::kFloat) - (P - 1) / 2.0f;
    auto grids = at::meshgrid({r, r, r}, "ij");
    it = made.emplace(P, at::stack({grids[0], grids[1], grids[2]}, -1).view({-1, 3}).contiguous()).first;
  }
  return it->second;
}

// Volume positions (z, y, x voxels) of the patch's voxels, [P^3, 3]: one
// matrix product, no per-axis tensors.
at::Tensor patch_positions(const std::array<double, 3>& centre, const std::array<double, 9>& m, long P,
                           const at::Tensor& displacement) {
  const at::Tensor mat_t = at::tensor(std::vector<float>(m.begin(), m.end()), at::kFloat).view({3, 3}).t();
  const at::Tensor c = at::tensor({(float)centre[0], (float)centre[1], (float)centre[2]}).view({1, 3});
  at::Tensor pos = at::addmm(c, patch_offsets(P), mat_t);
  if (displacement.defined()) pos.add_(displacement.to(at::kFloat));
  return pos;
}

// Trilinear samples of `volume` ([C, Z, Y, X]) at `pos` minus `lo` (the
// volume is a crop starting there); 0 outside. [C, P, P, P].
at::Tensor trilinear_at(const at::Tensor& volume, const at::Tensor& pos, const std::array<long, 3>& lo, long P) {
  // grid_sample wants (x, y, z) normalised to [-1, 1] (align_corners): one
  // product with a permuting, scaling matrix.
  float scale_and_swap[9] = {0};
  float shift[3];
  for (int j = 0; j < 3; ++j) {
    const int axis = 2 - j;  // grid column j is volume axis 2 - j
    const float s = 2.0f / std::max<long>(1, volume.size(1 + axis) - 1);
    scale_and_swap[axis * 3 + j] = s;
    shift[j] = -static_cast<float>(lo[axis]) * s - 1.0f;
  }
  const at::Tensor S = at::from_blob(scale_and_swap, {3, 3}, at::kFloat);
  const at::Tensor b = at::from_blob(shift, {1, 3}, at::kFloat);
  const at::Tensor grid = at::addmm(b, pos, S).view({1, P, P, P, 3});
  return at::grid_sampler(volume.unsqueeze(0).to(at::kFloat), grid, /*bilinear*/ 0, /*zeros*/ 0, true).squeeze(0);
}

// The value of the nearest voxel of `volume` ([C, Z, Y, X], any type) at
// `pos` (halves to even, as grid_sample's nearest mode); 0 outside. Reads
// only the voxels sampled: no copy of the volume, in its own type.
at::Tensor nearest_at(const at::Tensor& volume, const at::Tensor& pos, long P) {
  const long C = volume.size(0), Z = volume.size(1), Y = volume.size(2), X = volume.size(3);
  const at::Tensor idx = pos.round().to(at::kLong);
  const at::Tensor z = idx.select(1, 0), y = idx.select(1, 1), x = idx.select(1, 2);
  const at::Tensor inside = z.ge(0) & z.lt(Z) & y.ge(0) & y.lt(Y) & x.ge(0) & x.lt(X);
  const at::Tensor linear = (z.clamp(0, Z - 1) * Y + y.clamp(0, Y - 1)) * X + x.clamp(0, X - 1);
  std::vector<at::Tensor> channels;
  for (long c = 0; c < C; ++c)
    channels.push_back(at::take(volume[c], linear).masked_fill_(~inside, 0).view({P, P, P}));
  return at::stack(channels);
}

}  // namespace

at::Tensor sample_patch(const at::Tensor& volume, const std::array<double, 3>& centre,
                        const std::array<double, 9>& m, long P, const at::Tensor& displacement, bool nearest) {
  const at::Tensor pos = patch_positions(centre, m, P, displacement);
  return nearest ? nearest_at(volume, pos, P).to(at::kFloat) : trilinear_at(volume, pos, {0, 0, 0}, P);
}

// [1 + tasks, P, P, P]: the image and one mask per task (a task: label
// values), sampled through the affine and displacement: the image on the
// patch's footprint only, the label map at the sampled voxels only.
at::Tensor case_patch(const CaseVolume& c, const at::Tensor& image, const std::vector<std::vector<long>>& tasks,
                    const std::array<double, 3>& centre, const std::array<double, 9>& m, long P,
                    const at::Tensor& displacement, double displacement_max) {
  const Footprint f = footprint(c.shape, centre, m, P, displacement_max);
  at::Tensor out = at::zeros({1 + static_cast<long>(tasks.size()), P, P, P});
  if (f.empty) return out;
  // One trilinear channel and one nearest one, whatever the number of
  // tasks: the resampling is most of an episode's cost.
  const at::Tensor pos = patch_positions(centre, m, P, displacement);
  out[0].copy_(trilinear_at(crop(image, f).unsqueeze(0), pos, f.lo, P)[0]);
  if (tasks.empty()) return out;
  // (int32, so that any task value compares without overflow)
  const at::Tensor labels = nearest_at(c.labels.unsqueeze(0), pos, P)[0].to(at::kInt);
  for (size_t i = 0; i < tasks.size(); ++i) {
    at::Tensor mask = labels.eq(tasks[i][0]);
    for (size_t j = 1; j < tasks[i].size(); ++j) mask.logical_or_(labels.eq(tasks[i][j]));
    out[1 + i].copy_(mask);
  }
  return out;
}

std::vector<std::string> EpisodeSampler::dataset_names() const {
  std::vector<std::string> names;
  for (const auto& d : datasets_) names.push_back(d.name);
  return names;
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
  b.task_labels.assign(batch_size, std::vector<std::vector<long>>(K));
  b.dataset.assign(batch_size, -1);
  std::vector<double> weights;
  for (const auto& d : datasets_) weights.push_back(d.weight);

  for (long item = 0; item < batch_size; ++item) {
    const uint64_t episode = static_cast<uint64_t>(index) * static_cast<uint64_t>(batch_size) + item;
    Rng r(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(rank_) * 0xBF58476D1CE4E5B9ULL + episode * 0x94D049BB133111EBULL + 1);
    at::Generator gen = at::detail::createCPUGenerator(r());
    const size_t di = std::discrete_distribution<size_t>(weights.begin(), weights.end())(r);
    const auto& d = datasets_[di];
    b.dataset[item] = static_cast<long>(di);
    const size_t qi = std::uniform_int_distribution<size_t>(0, d.cases.size() - 1)(r);
    if (d.regions.enabled) {
      sample_regions(di, qi, r, gen, b, item);
      continue;
    }
    size_t ri = qi;
    if (d.cases.size() > 1)
      while (ri == qi) ri = std::uniform_int_distribution<size_t>(0, d.cases.size() - 1)(r);
    // The voxels of both cases, held for this episode (read on demand for datasets larger than memory).
    const auto q_held = case_at(di, qi), ref_held = case_at(di, ri);
    const CaseVolume& q = *q_held;
    const CaseVolume& ref = *ref_held;
    std::vector<long> shared;
    for (long c : q.classes)
      if (std::find(ref.classes.begin(), ref.classes.end(), c) != ref.classes.end()) shared.push_back(c);
    if (shared.empty()) continue;  // leaves this item all padding
    std::shuffle(shared.begin(), shared.end(), r);
    // Random class dropping: keep between 1 and K of the shared classes.
    const long k = std::uniform_int_distribution<long>(1, std::min<long>(K, shared.size()))(r);
    shared.resize(k);
    std::vector<std::vector<long>> tasks;
    for (long c : shared) tasks.push_back({c});

    // Query crop: around a foreground voxel (oversampling) or anywhere.
    std::array<double, 3> qc;
    if (chance(r, options_.foreground_oversample)) {
      qc = random_location(q, {shared[std::uniform_int_distribution<long>(0, k - 1)(r)]}, r);
      // Offset in volume voxels, before the patch's rotation and scale.
      const double spread = options_.foreground_spread * (P - 1) / 2.0;
      if (spread > 0)
        for (auto& c : qc) c += uniform(r, -spread, spread);
    } else {
      qc = {uniform(r, 0, q.shape[0] - 1), uniform(r, 0, q.shape[1] - 1), uniform(r, 0, q.shape[2] - 1)};
    }
    // Reference crop: centred on all its masks (plus jitter) so it keeps them.
    std::array<double, 3> rc = box_centre(ref, shared);
    const double jitter = options_.augment.enabled ? options_.augment.translation_fraction * P : 0.0;
    for (auto& c : rc) c += uniform(r, -jitter, jitter);

    const auto qa = random_affine(r, options_.augment), ra = random_affine(r, options_.augment);
    at::Tensor q_patch = mirror_randomly(case_patch(q, q.image, tasks, qc, qa, P, {}, 0), r, options_.augment);
    at::Tensor r_patch = case_patch(ref, ref.image, tasks, rc, ra, P, {}, 0);
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
      b.task_labels[item][j] = {shared[j]};
      auto it = d.class_ids.find(shared[j]);
      b.class_ids[item][j] = it == d.class_ids.end() ? -1 : it->second;
    }
  }
  return b;
}

void EpisodeSampler::sample_regions(size_t di, size_t ci, std::mt19937_64& r, at::Generator& gen, EpisodeBatch& b,
                                    long item) const {
  const LoadedDataset& d = datasets_[di];
  const RegionIndex& index = regions_[di][ci];
  const auto held = case_at(di, ci);
  const CaseVolume& c = *held;
  const long P = options_.patch, K = options_.max_classes;
  if (index.regions.empty()) return;
  // Tasks: K' <= K disjoint sets of regions, each a seed region grown, now
  // and then, into a union of touching regions.
  const long k = std::uniform_int_distribution<long>(1, std::min<long>(K, index.regions.size()))(r);
  std::set<long> used;
  std::vector<std::vector<long>> tasks;
  for (long j = 0; j < k; ++j) {
    long seed_region = -1;
    for (int attempt = 0; attempt < 20 && seed_region < 0; ++attempt) {
      const long v = index.regions[std::uniform_int_distribution<size_t>(0, index.regions.size() - 1)(r)];
      if (!used.count(v)) seed_region = v;
    }
    if (seed_region < 0) break;
    std::vector<long> task{seed_region};
    used.insert(seed_region);
    if (d.regions.union_max > 1 && chance(r, d.regions.union_probability)) {
      const long size = std::uniform_int_distribution<long>(2, d.regions.union_max)(r);
      while (static_cast<long>(task.size()) < size) {
        std::vector<long> frontier;
        for (long t : task) {
          const auto it = index.neighbours.find(t);
          if (it == index.neighbours.end()) continue;
          for (long n : it->second)
            if (!used.count(n) && std::find(frontier.begin(), frontier.end(), n) == frontier.end()) frontier.push_back(n);
        }
        if (frontier.empty()) break;
        const long next = frontier[std::uniform_int_distribution<size_t>(0, frontier.size() - 1)(r)];
        task.push_back(next);
        used.insert(next);
      }
    }
    std::sort(task.begin(), task.end());
    tasks.push_back(std::move(task));
  }
  const long kk = static_cast<long>(tasks.size());
  // The same brain for query and reference: the real image, or one generated image.
  at::Tensor image = c.image;
  if (chance(r, d.regions.synthetic)) image = synthesize_image(index.synth_index, index.synth_regions, r(), SynthOptions{});
  // Query crop: around a voxel of one task (moved by the spread); reference: centred on all tasks.
  std::array<double, 3> qc = random_location(c, tasks[std::uniform_int_distribution<long>(0, kk - 1)(r)], r);
  const double spread = options_.foreground_spread * (P - 1) / 2.0;
  if (spread > 0)
    for (auto& v : qc) v += uniform(r, -spread, spread);
  std::vector<long> all_regions;
  for (const auto& t : tasks) all_regions.insert(all_regions.end(), t.begin(), t.end());
  std::array<double, 3> rc = box_centre(c, all_regions);
  const double jitter = options_.augment.enabled ? options_.augment.translation_fraction * P : 0.0;
  for (auto& v : rc) v += uniform(r, -jitter, jitter);
  // Each its own affine and smooth deformation: only correspondence solves the task.
  const auto qa = random_affine(r, options_.augment), ra = random_affine(r, options_.augment);
  const double q_amplitude = uniform(r, 0, d.regions.deformation), r_amplitude = uniform(r, 0, d.regions.deformation);
  const at::Tensor qd = smooth_displacement(P, q_amplitude, gen);
  const at::Tensor rd = smooth_displacement(P, r_amplitude, gen);
  at::Tensor q_patch = mirror_randomly(case_patch(c, image, tasks, qc, qa, P, qd, q_amplitude), r, options_.augment);
  at::Tensor r_patch = case_patch(c, image, tasks, rc, ra, P, rd, r_amplitude);
  at::Tensor q_masks = q_patch.slice(0, 1).gt(0.5).to(at::kFloat);
  at::Tensor r_masks = r_patch.slice(0, 1).gt(0.5).to(at::kFloat);
  if (chance(r, options_.perturb_reference)) r_masks = perturb_masks(r_masks, r);
  b.query[item][0].copy_(augment_intensity(q_patch[0], r, options_.augment, gen));
  b.reference[item][0].copy_(augment_intensity(r_patch[0], r, options_.augment, gen));
  (void)K;
  for (long j = 0; j < kk; ++j) {
    if (r_masks[j].sum().item<double>() < 1) continue;  // the reference crop lost it
    b.query_masks[item][j].copy_(q_masks[j]);
    b.reference_masks[item][j].copy_(r_masks[j]);
    b.valid[item][j] = 1;
    b.task_labels[item][j] = tasks[j];
    b.class_ids[item][j] = -1;  // a new task every time: no memory-bank entry
  }
}

}  // namespace iris::data
