// iris-train: episodic in-context training.
//   iris-train CONFIG.yaml [--set key=value ...] [--dump-config] [--resume]
// Ranks and world size come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or
// srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), with MASTER_ADDR/PORT.
#include <filesystem>
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/data/case_cache.h"
#include "iris/data/dataset.h"
#include "iris/data/episodes.h"
#include "iris/io/intensity.h"
#include "iris/model/model_config.h"
#include "iris/train/trainer.h"
#include "iris/io/image_io.h"
#include "iris/io/preprocess.h"

using namespace iris;
namespace fs = std::filesystem;

namespace {

std::string intensity_for(const data::DatasetSpec& d) {
  if (!d.intensity.empty()) return d.intensity;
  if (d.modality == "CT") return "ct";
  return "mr";  // MR, PET and anything else: percentile clip + z-score
}

// Spatial preprocessing (reorient, resample, crop) from the config's
// preprocess section; unset = voxels as they are on disk.
std::optional<io::PreprocessConfig> g_spatial;

data::CaseVolume load_case(const data::DatasetSpec& d, const data::CaseSpec& c) {
  io::Image image = io::read_image(c.image);
  io::Image labels = io::read_labels(c.labels);
  io::check_same_grid(image, labels);
  if (g_spatial) {
    io::PreprocessedImage pre = io::preprocess(image, *g_spatial);
    io::PreprocessedImage lab = io::preprocess_labels(labels, pre);
    image.voxels = pre.voxels;
    image.geometry = pre.geometry;
    labels.voxels = lab.voxels;
  }
  data::CaseVolume v;
  v.name = c.name;
  v.image = io::normalise_intensity(image.voxels, intensity_for(d));
  v.labels = labels.voxels.to(at::kLong);
  v.classes = data::classes_present(v.labels, d, c.labels);
  v.spacing = {image.geometry.spacing[2], image.geometry.spacing[1], image.geometry.spacing[0]};
  return v;
}

const std::vector<std::string> kTopLevel{"model", "train", "data", "preprocess"};

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"iris-train: episodic in-context training of an IRIS model"};
  std::string config_path;
  std::vector<std::string> overrides;
  bool dump = false, fill_cache = false;
  std::string resume_mode;
  cli.add_option("config", config_path, "training config (YAML)")->required();
  cli.add_option("--set", overrides, "override a key: --set train.lr=1e-3 (repeatable)");
  cli.add_flag("--dump-config", dump, "print the resolved configuration and exit");
  CLI::Option* resume_option =
      cli.add_option("--resume", resume_mode,
                     "continue from OUTPUT_DIR/checkpoints/last.ckpt; --resume=auto: from the newest intact checkpoint "
                     "(last.ckpt, else iter_*.ckpt), or from scratch when there is none")
          ->expected(0, 1)
          ->check(CLI::IsMember({"", "last", "auto"}));
  cli.add_flag("--fill-cache", fill_cache,
               "preprocess every train/val case into data.cache and exit (for a build without ITK to train from)");
  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-train", [&]() -> int {
    ConfigMap config = ConfigMap::load_yaml_file(config_path);
    for (const auto& o : overrides) config.apply_override(o);
    for (const auto& [k, v] : config.entries()) {
      const std::string top = k.substr(0, k.find('.'));
      if (std::find(kTopLevel.begin(), kTopLevel.end(), top) == kTopLevel.end() || k.find('.') == std::string::npos) {
        std::string msg = "unknown top-level key '" + top + "' (known: model, train, data, preprocess)";
        const std::string hint = nearest_word(top, kTopLevel);
        if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
        throw Error(config.origin(k).empty() ? k : config.origin(k), msg);
      }
    }
    const model::ModelConfig model_config = model::ModelConfig::from_config(config.subtree("model"));
    train::TrainConfig train_config = train::TrainConfig::from_config(config.subtree("train"));
    train_config.check_against(model_config.max_patch_size);
    if (dump) {
      std::cout << "# resolved configuration (model defaults shown in full)\n";
      ConfigMap shown = config;
      const ConfigMap model_keys = model_config.to_config();
      for (const auto& [k, v] : model_keys.entries()) shown.set("model." + k, v);
      std::cout << shown.to_text();
      return 0;
    }
    const ConfigMap data_config = config.subtree("data");
    for (const auto& [k, v] : data_config.entries())
      if (k.rfind("datasets.", 0) != 0 && k != "cache") {
        std::string msg = "unknown key (known under data: datasets, cache)";
        const std::string hint = nearest_word(k, {"datasets", "cache"});
        if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
        throw Error(config.origin("data." + k).empty() ? "data." + k : config.origin("data." + k), msg);
      }
    // Cases preprocessed once into data.cache; the key uses the preprocess
    // section as written, so every machine running this config agrees on it.
    std::optional<data::CaseCache> cache;
    if (data_config.has("cache")) cache.emplace(data_config.get("cache"), config.subtree("preprocess").to_text());
    if (fill_cache && !cache) throw Error("--fill-cache", "needs data.cache (e.g. --set data.cache=cache/)");
    data::RecordedDatasets recorded;
    if (cache) recorded = [&](const std::string& name) { return cache->recorded_dataset(name); };
    std::vector<data::DatasetSpec> datasets = data::datasets_from_config(data_config, recorded);
    {
      // The exported model records the full preprocessing (spatial steps +
      // the first dataset's intensity scheme) so iris-infer can repeat it.
      ConfigMap pre = config.subtree("preprocess");
      if (!pre.entries().empty()) {
        g_spatial = io::PreprocessConfig::from_config(pre);
        io::PreprocessConfig stored = *g_spatial;
        stored.intensity = intensity_for(datasets.front());
        g_spatial->intensity = "none";  // intensity is applied per dataset
        const ConfigMap stored_keys = stored.to_config();
        for (const auto& [k, v] : stored_keys.entries()) config.set("preprocess." + k, v, "resolved");
      }
    }
    app::configure_threads(train_config.threads);
    const train::DistributedEnv env = train::DistributedEnv::from_environment();
    // "cuda" is this rank's own GPU (cuda:LOCAL_RANK); collectives run there.
    train::CommunicatorOptions comm_options;
    comm_options.device = resolve_device(train_config.device, env, visible_cuda_devices(), "train.device");
    train_config.device = comm_options.device.str();
    comm_options.backend = train_config.distributed;
    comm_options.timeout = std::chrono::seconds(train_config.distributed_timeout_s);
    auto comm = train::make_communicator(env, comm_options);
    if (comm->rank() == 0) {
      fs::create_directories(train_config.output_dir);
      for (const auto& d : datasets) data::write_split(d, (fs::path(train_config.output_dir) / ("split_" + d.name + ".tsv")).string());
      std::cerr << "iris-train: " << comm->size() << " rank(s), backend " << comm->backend() << ", device "
                << train_config.device << "\n";
    }
    const std::vector<std::string> class_names = data::class_table(datasets);
    data::CaseLoader loader = load_case;
    if (cache) {
      loader = cache->loader(load_case, [](const std::string& w) { app::log_warn(w); });
      if (comm->rank() == 0)
        for (const auto& d : datasets) cache->record_dataset(d);
    }
    std::vector<data::LoadedDataset> train_sets, val_sets;
    auto load_all = [&] {
      train_sets = data::load_datasets(datasets, "train", loader);
      val_sets = data::load_datasets(datasets, "val", loader);
    };
    if (cache && comm->size() > 1) {
      // Rank 0 fills a cold cache alone; the others then read it.
      if (comm->rank() == 0) load_all();
      comm->barrier();
      if (comm->rank() != 0) load_all();
    } else {
      load_all();
    }
    if (fill_cache) {
      long n = 0;
      for (const auto& d : train_sets) n += static_cast<long>(d.cases.size());
      for (const auto& d : val_sets) n += static_cast<long>(d.cases.size());
      if (comm->rank() == 0) std::cerr << "iris-train: " << n << " cases cached in " << cache->folder() << "\n";
      return 0;
    }
    data::EpisodeSampler train_sampler(train_sets, train_config.episodes, static_cast<uint64_t>(train_config.seed));
    std::optional<data::EpisodeSampler> val_sampler;
    if (!val_sets.empty()) {
      data::EpisodeOptions vo = train_config.episodes;
      vo.augment.enabled = false;
      vo.perturb_reference = 0;
      vo.foreground_oversample = 1.0;
      val_sampler.emplace(val_sets, vo, static_cast<uint64_t>(train_config.seed) + 7919);
    }
    train::Trainer::install_signal_handlers();
    train::Trainer trainer(train_config, model_config, config, std::move(train_sampler), std::move(val_sampler),
                           class_names, *comm);
    train::ResumeMode resume = train::ResumeMode::kNone;
    if (resume_option->count() > 0) resume = resume_mode == "auto" ? train::ResumeMode::kAuto : train::ResumeMode::kLast;
    const auto outcome = trainer.run(resume);
    if (outcome == train::TrainOutcome::kPreempted) {
      if (comm->rank() == 0)
        std::cerr << "iris-train: stopped on request; checkpoint " << trainer.last_checkpoint()
                  << " (resume with --resume; exit code " << app::kPreempted << " asks SLURM to requeue)\n";
      return app::kPreempted;
    }
    if (comm->rank() == 0) std::cerr << "iris-train: done; model written to " << trainer.final_model_path() << "\n";
    return 0;
  });
}
