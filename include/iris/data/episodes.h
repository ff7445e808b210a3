#pragma once
// Episodic sampling for in-context training: each episode is a query and a
// different reference case of one dataset, a random subset of their shared
// classes as binary masks, both augmented, cropped to the patch size.
#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

#include "iris/data/case_store.h"
#include "iris/data/dataset.h"

namespace iris::data {

struct AugmentOptions {
  bool enabled = true;
  double scale_min = 0.9, scale_max = 1.1;
  double rotation_degrees = 10.0;
  double translation_fraction = 0.1;  // of the patch, for the reference jitter
  double brightness_min = 0.9, brightness_max = 1.1, brightness_shift_std = 0.1;
  double gamma_min = 0.8, gamma_max = 1.2;
  double contrast_min = 0.8, contrast_max = 1.2;
  double blur_sigma_min = 0.7, blur_sigma_max = 1.3;
  double noise_std_max = 0.02;
  double intensity_probability = 0.3;  // each intensity transform's chance
  double blur_probability = 0.2;
  // Axes ("x", "xz": x = the last tensor dim of [Z, Y, X]) along which the
  // query patch (image and masks) is mirrored, each with probability 0.5,
  // independently of the reference: the network learns mirror invariance
  // there (train.augment_mirror; iris-infer --tta uses it). "" = none, and no
  // random numbers are drawn for it (runs repeat as before).
  std::string mirror_axes;
};

struct EpisodeOptions {
  long patch = 128;
  long max_classes = 3;              // K slots per episode (padded)
  double foreground_oversample = 0.67;
  // Where a sampled foreground voxel lands in the query patch: the patch
  // centre is moved from it by up to this fraction of the half patch per axis
  // (uniform, volume voxels, before the patch's rotation and scale; 0 = always
  // centred, the sampling before this option existed). Centred crops let a
  // small structure be found by position alone ("predict a blob in the
  // middle"), which the reference then never has to steer.
  double foreground_spread = 0.7;
  double perturb_reference = 0.2;    // chance to dilate/erode reference masks
  AugmentOptions augment;
};

struct EpisodeBatch {
  at::Tensor query, query_masks;          // [B, 1, P, P, P], [B, K, P, P, P]
  at::Tensor reference, reference_masks;  // same shapes
  at::Tensor class_ids;                   // [B, K] memory-bank ids, -1 = padding
  at::Tensor valid;                       // [B, K] 1 = real class
  // Per item and class: the label values that make the class (one for a
  // class of a classes dataset; the regions of the task for tasks: regions).
  std::vector<std::vector<std::vector<long>>> task_labels;
  std::vector<long> dataset;  // [B] each item's dataset (EpisodeSampler::dataset_names order)
};

// How a `tasks: regions` episode's generated image is drawn (SynthSeg-like).
struct SynthOptions {
  double std_max = 0.08;       // per-region noise, drawn per region in [0, std_max]
  bool bias_field = true;      // smooth multiplicative field, exp(N(0, 0.3)) on a 4^3 lattice
  double blur_sigma_max = 1.2; // voxels; 0 = no blur
  double noise_std_max = 0.05; // additive noise over the whole volume
};

// An image of the volume whose voxel v belongs to region index[v] (0..n-1;
// region 0 is background and stays 0): a mean per region uniform in [0, 1]
// (returned in `means` when given), that region's noise, then bias field,
// blur and noise, z-scored over the non-background voxels. Deterministic in
// `seed`.
at::Tensor synthesize_image(const at::Tensor& index, long regions, uint64_t seed, const SynthOptions& options,
                            std::vector<double>* means = nullptr);

// A loaded dataset, with global class ids per label. Its cases are in
// memory, or, with a `store`, only described here and read on demand.
struct LoadedDataset {
  std::string name;
  double weight = 1.0;
  std::vector<CaseVolume> cases;
  std::map<long, long> class_ids;  // label value -> memory-bank id
  RegionTasks regions;             // tasks: regions (see dataset.h)
  std::shared_ptr<CaseStore> store;
  // Per case, the label values held out by regions.held_out_anatomy
  // (empty without it), sorted.
  std::vector<std::vector<long>> held_out_by_anatomy;
};

struct LoadOptions {
  // 0: every case stays in memory. Otherwise the cases' voxels are read on
  // demand and at most this many bytes of them stay resident (per dataset
  // list, shared by its datasets), so memory does not grow with the data.
  size_t memory_budget_bytes = 0;
  int threads = 1;  // cases loaded (and a cold cache filled) in parallel
  // Called after each case with (done, total).
  std::function<void(long, long)> progress;
};

// The label values (> 0) of `labels` with at least `fraction` of their voxels
// on `values` of `anatomy` (same shape), sorted: what held_out_anatomy holds out.
std::vector<long> regions_inside(const at::Tensor& labels, const at::Tensor& anatomy, const std::vector<long>& values,
                                 double fraction);

// Loads every case of every dataset's `subset` ("train", "val", "test"):
// labels in the smallest integer type, each case indexed (case_store.h);
// with held_out_anatomy, each case's anatomy map is read through the same
// loader and the regions it holds out are kept in held_out_by_anatomy.
std::vector<LoadedDataset> load_datasets(const std::vector<DatasetSpec>& specs, const std::string& subset,
                                         const CaseLoader& loader, const LoadOptions& options = {});

class EpisodeSampler {
 public:
  EpisodeSampler(std::vector<LoadedDataset> datasets, EpisodeOptions options, uint64_t seed, int rank = 0);

  // Episode number `index` is a pure function of (seed, rank, index), so a
  // resumed run draws exactly the episodes it would have drawn.
  EpisodeBatch sample(long index, long batch_size) const;

  const EpisodeOptions& options() const { return options_; }
  // The datasets' names, in the order EpisodeBatch::dataset counts them.
  std::vector<std::string> dataset_names() const;

  // What a regions dataset's case offers: its task regions and their neighbours.
  struct RegionIndex {
    std::vector<long> regions;                      // usable label values
    std::map<long, std::vector<long>> neighbours;   // touching usable regions
    at::Tensor synth_index;                         // [Z,Y,X] region index for generated images
    long synth_regions = 0;
  };
  const RegionIndex& region_index(size_t dataset, size_t case_index) const { return regions_[dataset][case_index]; }
  // A case with its voxels (read through the dataset's store when it has one).
  std::shared_ptr<const CaseVolume> case_at(size_t dataset, size_t case_index) const;

 private:
  std::vector<LoadedDataset> datasets_;
  EpisodeOptions options_;
  uint64_t seed_;
  int rank_;
  std::vector<std::vector<RegionIndex>> regions_;  // per dataset, per case (regions datasets only)

  void sample_regions(size_t dataset, size_t case_index, std::mt19937_64& r, at::Generator& gen, EpisodeBatch& b,
                      long item) const;
};

// Samples a P^3 patch of `volume` ([C, Z, Y, X]) around `centre` (voxels)
// through the affine `matrix` (3x3, patch axes -> volume axes, voxel units),
// plus `displacement` ([P^3, 3] volume voxels, z y x; undefined = none),
// trilinearly (or the nearest voxel's value); outside the volume is 0.
at::Tensor sample_patch(const at::Tensor& volume, const std::array<double, 3>& centre,
                        const std::array<double, 9>& matrix, long patch, const at::Tensor& displacement = {},
                        bool nearest = false);

// [1 + tasks, P, P, P]: sample_patch of the case's `image` (trilinear) and
// one 0/1 mask per task (a task: label values) from the label map sampled
// once at the nearest voxel, around `centre`, built on the voxels the patch
// can reach only (its footprint, `displacement_max` voxels wider), so an
// episode's cost grows neither with the volume nor with the classes. Equal
// to sample_patch of the whole image and label map.
at::Tensor case_patch(const CaseVolume& c, const at::Tensor& image, const std::vector<std::vector<long>>& tasks,
                      const std::array<double, 3>& centre, const std::array<double, 9>& matrix, long patch,
                      const at::Tensor& displacement = {}, double displacement_max = 0);

}  // namespace iris::data
