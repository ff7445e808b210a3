#pragma once
// Training data as users have it on disk: a plain list of (image, label)
// pairs, nnU-Net v2 raw folders (dataset.json, imagesTr, labelsTr) or Medical
// Segmentation Decathlon folders. Declared in YAML under data.datasets.NAME.
// No ITK here: loading voxels is the caller's job (a loader function).
#include <array>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

#include "iris/common/config_map.h"

namespace iris::data {

struct CaseSpec {
  std::string name;
  std::string image;
  std::string labels;
};

// Episodes of a `tasks: regions` dataset: in-context pretraining from label
// maps (atlases). Each class of an episode is a random region of the case's
// label map, or a union of neighbouring regions, so the set of tasks is
// combinatorially large and only the reference can say what to segment.
// Query and reference are the same case, each through its own random affine
// and smooth deformation; with probability `synthetic` both show one image
// generated from the label map (per-region intensities drawn per episode,
// bias field, blur, noise) instead of the real image.
struct RegionTasks {
  bool enabled = false;
  std::vector<long> held_out;     // label values that never enter a task, not even a union
  long union_max = 3;             // regions in a union at most
  double union_probability = 0.5;
  long min_voxels = 8;            // smaller regions (at training resolution) are not tasks
  double synthetic = 0.5;         // chance of a generated image
  double deformation = 2.0;       // largest smooth displacement, voxels
  // Anatomy held out under every atlas's name: a region with at least
  // `held_out_anatomy_fraction` of its voxels on `held_out_anatomy_values`
  // of the label map `held_out_anatomy` (a file on each case's image grid,
  // relative to root like the cases) never enters a task either. E.g. the
  // AAL hippocampus held out of a Brodmann atlas, whose area 34 is mostly
  // amygdala.
  std::string held_out_anatomy;
  std::vector<long> held_out_anatomy_values;
  double held_out_anatomy_fraction = 0.15;
};

struct DatasetSpec {
  std::string name;
  std::string layout = "list";   // list | nnunet | msd
  std::string root;
  std::string modality = "MR";   // MR | CT | PET: picks the intensity scheme
  std::string intensity;         // explicit scheme; "" = from modality
  double weight = 1.0;           // sampling weight among datasets
  std::map<long, std::string> class_names;  // label value -> name
  std::vector<CaseSpec> cases;
  std::array<double, 3> split{0.75, 0.05, 0.20};  // train / val / test fractions
  long split_seed = 0;
  RegionTasks regions;           // tasks: regions

  std::vector<CaseSpec> train, val, test;  // filled by make_split
};

// What a training cache remembers of a folder dataset (see case_cache.h).
struct RecordedDataset {
  std::vector<CaseSpec> cases;
  std::map<long, std::string> class_names;
};
using RecordedDatasets = std::function<std::optional<RecordedDataset>(const std::string& dataset)>;

// Reads data.datasets.* from a config (other data.* keys are the caller's).
// Finds cases of nnU-Net/MSD layouts on disk; iris::Error for missing
// folders, unpaired images, unknown keys. When a folder dataset's root is
// missing and `recorded` knows the dataset, its recorded cases are used.
std::vector<DatasetSpec> datasets_from_config(const ConfigMap& data_config, const RecordedDatasets& recorded = {});
// The keys of one data.datasets.NAME section.
const std::vector<std::string>& dataset_keys();

// Deterministic split by seed (sorted case names, shuffled with the seed).
// A dataset whose train fraction is 0 trains on none of its cases; one whose
// rounding would leave no training case (a tiny dataset) trains on one, and
// validation and test share the rest.
void make_split(DatasetSpec& d);
// Writes the split as text (one "subset<TAB>case" per line) for auditing.
void write_split(const DatasetSpec& d, const std::string& path);

// Where a class lies in a case, so that episodes find it without scanning
// the volume: its bounding box, its voxel count and up to `max_samples` of
// its voxels spread evenly over them (as nnU-Net's class locations).
struct ClassLocations {
  std::array<long, 3> lo{}, hi{};  // inclusive, z y x
  long count = 0;
  at::Tensor voxels;               // [N, 3] int32, z y x
};

// A loaded, preprocessed case: image [Z, Y, X] float (normalised), labels
// [Z, Y, X] integer (after loading: the smallest type that holds them), and
// the label values present. A case of a dataset larger than memory keeps
// only its description here (image and labels undefined) and is read on
// demand (episodes.h, CaseStore).
struct CaseVolume {
  std::string name, dataset;
  at::Tensor image, labels;
  std::vector<long> classes;
  std::array<double, 3> spacing{1, 1, 1};
  std::array<long, 3> shape{};               // z y x (case_store.h: index_case)
  std::map<long, ClassLocations> locations;  // per class (index_case)
};


using CaseLoader = std::function<CaseVolume(const DatasetSpec&, const CaseSpec&)>;

// Global memory-bank ids: classes with the same name share an id across
// datasets; returns names indexed by id.
std::vector<std::string> class_table(const std::vector<DatasetSpec>& datasets);

}  // namespace iris::data
