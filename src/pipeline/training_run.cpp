#include "iris/pipeline/training_run.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <optional>
#include <thread>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/folder_lock.h"
#include "iris/common/log.h"
#include "iris/data/case_cache.h"
#include "iris/data/class_vocabulary.h"
#include "iris/data/dataset.h"
#include "iris/data/episodes.h"
#include "iris/io/image_io.h"
#include "iris/io/intensity.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_config.h"

namespace fs = std::filesystem;

namespace iris::pipeline {

namespace {

const std::vector<std::string> kTopLevel{"model", "train", "data", "preprocess"};

std::string intensity_for(const data::DatasetSpec& d) {
  if (!d.intensity.empty()) return d.intensity;
  if (d.modality == "CT") return "ct";
  return "mr";  // MR, PET and anything else: percentile clip + z-score
}

// Reads, checks and preprocesses one case (spatial steps from the config's
// preprocess section, intensity per dataset).
data::CaseVolume load_case(const data::DatasetSpec& d, const data::CaseSpec& c,
                           const std::optional<io::PreprocessConfig>& spatial) {
  Image image = io::read_image(c.image);
  Image labels = io::read_labels(c.labels);
  io::check_same_grid(image, labels);
  if (spatial) {
    io::PreprocessedImage pre = io::preprocess(image, *spatial);
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

// A cold cache filled by all ranks together: each preprocesses every
// size-th case the cache lacks, then waits for the others. The wait is on
// marker files in the (shared) cache folder, not on a collective: filling can
// take hours, far beyond train.distributed_timeout_s. The timeout applies to
// progress instead: when no unfinished rank has filled a case for that long,
// the wait ends with an error; a rank that fails says so in its marker. When
// the ranks do not share the cache folder (node-local caches), each fills
// what it needs itself.
void fill_cache_together(const data::CaseCache& cache, const std::vector<data::DatasetSpec>& datasets,
                         const data::CaseLoader& loader, const data::LoadOptions& load_options,
                         train::Communicator& comm, long timeout_s) {
  const int rank = comm.rank(), size = comm.size();
  // This run's marker folder, named by rank 0: markers of earlier runs do not count.
  const fs::path base = fs::path(cache.folder()) / ".fill";
  double token = 0;
  if (rank == 0) {
    token = static_cast<double>(std::random_device{}() % 1000000000u + 1);
    fs::create_directories(base / std::to_string(static_cast<long>(token)));
  }
  token = comm.sum(token);
  const fs::path marks = base / std::to_string(static_cast<long>(token));
  if (comm.sum(fs::is_directory(marks) ? 1.0 : 0.0) < size) {
    if (rank == 0) {
      log::info("data.cache " + cache.folder() + " is not shared by every rank: each fills what it needs");
      fs::remove_all(marks);
    }
    return;
  }
  std::vector<data::DatasetSpec> share = datasets;
  long missing = 0;
  for (auto& d : share)
    for (auto* subset : {&d.train, &d.val}) {
      std::vector<data::CaseSpec> mine;
      for (const auto& c : *subset) {
        if (cache.contains(d, c)) continue;
        if (missing++ % size == rank) mine.push_back(c);
      }
      *subset = mine;
      d.test.clear();
    }
  // Every rank sees the same folder, so the same count; the sum keeps them in step anyway.
  if (comm.sum(static_cast<double>(missing)) == 0) {
    comm.barrier();
    if (rank == 0) fs::remove_all(marks);
    return;
  }
  const std::string mine = (marks / ("rank" + std::to_string(rank))).string();
  data::LoadOptions fill = load_options;
  fill.memory_budget_bytes = std::max<size_t>(fill.memory_budget_bytes, 1);  // keep descriptions only
  long filled = 0;
  fill.progress = [&](long done, long) {
    filled = done;
    write_text_file(mine + ".progress", std::to_string(done));
  };
  try {
    for (const char* subset : {"train", "val"}) {
      filled = 0;
      data::load_datasets(share, subset, loader, fill);
    }
  } catch (const std::exception& e) {
    write_text_file(mine + ".failed", e.what());
    throw;
  }
  long total_mine = 0;
  for (const auto& d : share) total_mine += static_cast<long>(d.train.size() + d.val.size());
  log::info("rank " + std::to_string(rank) + " filled " + std::to_string(total_mine) + " of the " +
            std::to_string(missing) + " cases the cache lacked");
  write_text_file(mine + ".done", "");
  auto last_change = std::chrono::steady_clock::now(), last_log = last_change;
  std::vector<std::string> seen(size);
  for (;;) {
    int done = 0;
    std::string waiting;
    for (int r = 0; r < size; ++r) {
      const std::string p = (marks / ("rank" + std::to_string(r))).string();
      if (fs::exists(p + ".failed")) {
        std::ifstream in(p + ".failed");
        std::string why((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        throw Error(cache.folder(), "rank " + std::to_string(r) + " failed while filling the cache: " + why);
      }
      if (fs::exists(p + ".done")) {
        ++done;
        continue;
      }
      std::ifstream in(p + ".progress");
      std::string now_seen((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (now_seen != seen[r]) {
        seen[r] = now_seen;
        last_change = std::chrono::steady_clock::now();
      }
      waiting += (waiting.empty() ? "" : ", ") + std::to_string(r);
    }
    if (done == size) break;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_change > std::chrono::seconds(timeout_s))
      throw Error("train.distributed_timeout_s", "rank(s) " + waiting + " filled no case of " + cache.folder() +
                                                     " for " + std::to_string(timeout_s) + " s: see their logs");
    if (now - last_log > std::chrono::seconds(60)) {
      log::info("waiting for rank(s) " + waiting + " to finish filling the cache");
      last_log = now;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  comm.barrier();  // every rank is past the wait before the markers go
  if (rank == 0) fs::remove_all(marks);
}

}  // namespace

ConfigMap load_training_config(const std::string& path, const std::vector<std::string>& overrides) {
  ConfigMap config = ConfigMap::load_yaml_file(path);
  for (const auto& o : overrides) config.apply_override(o);
  for (const auto& [k, v] : config.entries()) {
    const std::string top = k.substr(0, k.find('.'));
    if (std::find(kTopLevel.begin(), kTopLevel.end(), top) == kTopLevel.end() || k.find('.') == std::string::npos) {
      std::string msg = "unknown top-level key '" + top + "' (known: model, train, data, preprocess)";
      const std::string hint = nearest_word(top, kTopLevel);
      if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
      throw_at_origin(config.origin(k).empty() ? k : config.origin(k), msg);
    }
  }
  const ConfigMap data = config.subtree("data");
  const std::vector<std::string> data_keys{"datasets", "cache", "cache_memory_gb", "load_threads", "class_vocabulary"};
  for (const auto& [k, v] : data.entries())
    if (k.rfind("datasets.", 0) != 0 && std::find(data_keys.begin(), data_keys.end(), k) == data_keys.end()) {
      std::string msg = "unknown key (known under data: datasets, cache, cache_memory_gb, load_threads, class_vocabulary)";
      const std::string hint = nearest_word(k, data_keys);
      if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
      throw_at_origin(config.origin("data." + k).empty() ? "data." + k : config.origin("data." + k), msg);
    }
  const auto model_config = model::ModelConfig::from_config(config.subtree("model"));
  train::TrainConfig::from_config(config.subtree("train")).check_against(model_config.max_patch_size);
  return config;
}

std::string resolved_config_text(const ConfigMap& config) {
  ConfigMap shown = config;
  const ConfigMap model_keys = model::ModelConfig::from_config(config.subtree("model")).to_config();
  for (const auto& [k, v] : model_keys.entries()) shown.set("model." + k, v);
  return "# resolved configuration (model defaults shown in full)\n" + shown.to_text();
}

RunOutcome run_training(ConfigMap config, const TrainingRunOptions& options) {
  const model::ModelConfig model_config = model::ModelConfig::from_config(config.subtree("model"));
  train::TrainConfig train_config = train::TrainConfig::from_config(config.subtree("train"));
  train_config.check_against(model_config.max_patch_size);
  const ConfigMap data_config = config.subtree("data");
  // Cases preprocessed once into data.cache; the key uses the preprocess
  // section as written, so every machine running this config agrees on it.
  std::optional<data::CaseCache> cache;
  if (data_config.has("cache")) cache.emplace(data_config.get("cache"), config.subtree("preprocess").to_text());
  if (options.fill_cache_only && !cache) throw SettingError("fill_cache_only", "needs data.cache (e.g. " + setting_ref("overrides") + " data.cache=cache/)");
  data::RecordedDatasets recorded;
  if (cache) recorded = [&](const std::string& name) { return cache->recorded_dataset(name); };
  std::vector<data::DatasetSpec> datasets = data::datasets_from_config(data_config, recorded);
  // One name (and memory-bank row) per structure across datasets.
  if (data_config.has("class_vocabulary")) {
    const auto vocabulary = data::ClassVocabulary::load(data_config.get("class_vocabulary"));
    const auto unknown = vocabulary.apply(datasets);
    if (!unknown.empty()) {
      std::string names;
      for (const auto& n : unknown) names += (names.empty() ? "" : ", ") + n;
      log::warn("class names not in " + data_config.get("class_vocabulary") + " (each stays a class of its own): " + names);
    }
  }

  // The exported model records the full preprocessing (spatial steps + the
  // first dataset's intensity scheme) so iris-infer can repeat it.
  // Without a preprocess: section the cases go in at their own grids, but
  // still through their dataset's intensity scheme: the model records that
  // too (no spatial step, that scheme), or iris-infer would feed it raw values.
  std::optional<io::PreprocessConfig> spatial;
  io::PreprocessConfig stored;
  if (const ConfigMap pre = config.subtree("preprocess"); !pre.entries().empty()) {
    spatial = io::PreprocessConfig::from_config(pre);
    stored = *spatial;
    spatial->intensity = "none";  // intensity is applied per dataset
  } else {
    stored.reorient = false;
    stored.spacing.reset();
    stored.crop_foreground = false;
  }
  stored.intensity = intensity_for(datasets.front());
  const ConfigMap stored_keys = stored.to_config();
  for (const auto& [k, v] : stored_keys.entries()) config.set("preprocess." + k, v, "resolved");
  configure_threads(train_config.threads);

  // "cuda" is this rank's own GPU (cuda:LOCAL_RANK); collectives run there.
  const DistributedEnv env = DistributedEnv::from_environment();
  train::CommunicatorOptions comm_options;
  comm_options.device = resolve_device(train_config.device, env, visible_cuda_devices(), "train.device");
  train_config.device = comm_options.device.str();
  comm_options.backend = train_config.distributed;
  comm_options.timeout = std::chrono::seconds(train_config.distributed_timeout_s);
  auto comm = train::make_communicator(env, comm_options);
  if (comm->rank() == 0) {
    log::info(std::to_string(comm->size()) + " rank(s), backend " + comm->backend() + ", device " + train_config.device);
    if (!train_config.init_from.empty())
      log::info("weights from " + train_config.init_from + " (train.init_from)" +
                (options.resume == train::ResumeMode::kNone ? "" : "; a checkpoint, when one is resumed from, replaces them"));
  }
  data::CaseLoader loader = [&spatial](const data::DatasetSpec& d, const data::CaseSpec& c) {
    return load_case(d, c, spatial);
  };
  if (cache) {
    loader = cache->loader(loader, [](const std::string& w) { log::warn(w); });
    if (comm->rank() == 0)
      for (const auto& d : datasets) cache->record_dataset(d);
  }
  // With data.cache, cases are read on demand and at most cache_memory_gb
  // of them stay in memory (default 8 GB per rank; 0 keeps all); without a
  // cache every case stays in memory (re-preprocessing raw files per episode
  // would be far too slow).
  data::LoadOptions load_options;
  const double memory_gb = data_config.has("cache_memory_gb") ? config_double(data_config, "cache_memory_gb") : 8.0;
  if (!(memory_gb >= 0)) throw Error("data.cache_memory_gb", "must be >= 0 (0 keeps every case in memory)");
  if (cache && memory_gb > 0) load_options.memory_budget_bytes = static_cast<size_t>(memory_gb * 1e9);
  load_options.threads = data_config.has("load_threads")
                             ? static_cast<int>(config_int(data_config, "load_threads"))
                             : std::max(1, std::min(8, static_cast<int>(std::thread::hardware_concurrency())));
  if (load_options.threads < 1) throw Error("data.load_threads", "must be at least 1");
  const auto started = std::chrono::steady_clock::now();
  auto last_report = started;
  load_options.progress = [&](long done, long total) {
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_report < std::chrono::seconds(10)) return;
    last_report = now;
    const double elapsed = std::chrono::duration<double>(now - started).count();
    const double eta = done > 0 ? elapsed / done * (total - done) : 0;
    log::info("loading cases: " + std::to_string(done) + "/" + std::to_string(total) +
              (done == total ? " in " + std::to_string(static_cast<long>(elapsed)) + " s"
                             : ", ETA " + std::to_string(static_cast<long>(eta)) + " s"));
  };
  std::vector<data::LoadedDataset> train_sets, val_sets;
  auto load_all = [&] {
    train_sets = data::load_datasets(datasets, "train", loader, load_options);
    data::LoadOptions val_options = load_options;
    val_options.memory_budget_bytes /= 8;  // validation episodes are few
    if (load_options.memory_budget_bytes > 0) val_options.memory_budget_bytes = std::max<size_t>(val_options.memory_budget_bytes, 1);
    val_sets = data::load_datasets(datasets, "val", loader, val_options);
  };
  if (cache && comm->size() > 1)
    fill_cache_together(*cache, datasets, loader, load_options, *comm, train_config.distributed_timeout_s);
  load_all();
  // Every case read and checked: only now does the run write anything, and
  // it holds its folder for its whole life (a second run there is refused).
  std::optional<FolderLock> lock;
  std::exception_ptr refused;
  if (comm->rank() == 0) {
    try {
      fs::create_directories(train_config.output_dir);
      lock.emplace(train_config.output_dir, "train.output_dir");
      for (const auto& d : datasets)
        data::write_split(d, (fs::path(train_config.output_dir) / ("split_" + d.name + ".tsv")).string());
    } catch (...) {
      refused = std::current_exception();
    }
  }
  // Every rank learns whether rank 0 may write there: none waits at a
  // collective for a rank that has stopped.
  if (comm->size() > 1) {
    at::Tensor stop = at::full({1}, refused ? 1.0 : 0.0, at::TensorOptions().dtype(at::kFloat).device(comm_options.device));
    comm->allreduce_sum(stop);
    if (!refused && stop.item<double>() > 0)
      throw Error(train_config.output_dir, "rank 0 cannot start the run in this folder (its message says why)");
  }
  if (refused) std::rethrow_exception(refused);
  // What held_out_anatomy removed from the tasks, for the record.
  if (comm->rank() == 0)
    for (const auto& d : train_sets)
      for (size_t i = 0; i < d.held_out_by_anatomy.size(); ++i) {
        std::string values;
        for (long v : d.held_out_by_anatomy[i]) values += " " + std::to_string(v);
        log::info(d.name + "/" + d.cases[i].name + ": regions held out by anatomy (" +
                  std::to_string(static_cast<int>(std::lround(d.regions.held_out_anatomy_fraction * 100))) + " % or more on " +
                  d.regions.held_out_anatomy + "):" + (values.empty() ? " none" : values));
      }
  if (options.fill_cache_only) {
    long n = 0;
    for (const auto& d : train_sets) n += static_cast<long>(d.cases.size());
    for (const auto& d : val_sets) n += static_cast<long>(d.cases.size());
    if (comm->rank() == 0) log::info(std::to_string(n) + " cases cached in " + cache->folder());
    return RunOutcome::kCacheFilled;
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
                         data::class_table(datasets), *comm);
  if (options.progress) trainer.set_progress(options.progress);
  const auto outcome = trainer.run(options.resume);
  if (outcome == train::TrainOutcome::kPreempted) {
    if (comm->rank() == 0)
      log::info("stopped on request; checkpoint " + trainer.last_checkpoint() +
                " (resume with " + setting_name("resume") + "; exit code 124 asks SLURM to requeue)");
    return RunOutcome::kPreempted;
  }
  if (comm->rank() == 0) log::info("done; model written to " + trainer.final_model_path());
  return RunOutcome::kFinished;
}

}  // namespace iris::pipeline
