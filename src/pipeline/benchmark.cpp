#include "iris/pipeline/benchmark.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>

#include <unistd.h>

#include <torch/cuda.h>
#include <torch/torch.h>

#include "iris/common/compat.h"
#include "iris/common/config_map.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/data/case_cache.h"
#include "iris/data/episodes.h"
#include "iris/data/volume_cache.h"
#include "iris/model/iris_net.h"
#include "iris/model/stage_timer.h"
#include "iris/model/task_embedding.h"

namespace iris::pipeline {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

Json measure(const std::function<void()>& step, int warmup, int repeats, const torch::Device& device) {
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  for (int i = 0; i < warmup; ++i) step();
  sync();
  reset_peak_rss();
  if (device.is_cuda()) compat::cuda_reset_peak(device.index());
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = Clock::now();
    step();
    sync();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  const long long peak = device.is_cuda() ? compat::cuda_peak_allocated_bytes(device.index()) : peak_rss_bytes();
  return {{"median_ms", number(median(times))},
          {"min_ms", number(*std::min_element(times.begin(), times.end()))},
          {"peak_bytes", peak}};
}

}  // namespace

Json benchmark(const BenchmarkOptions& o) {
  ConfigMap cfg;
  cfg.set("preset", o.preset, "{preset}");
  cfg.merge(read_config_sections(o.config_path, o.overrides, {"model"})["model"]);
  auto config = model::ModelConfig::from_config(cfg);
  const long patch = o.patch > 0 ? o.patch : config.max_patch_size;
  const torch::Device device =
      resolve_device(o.device, DistributedEnv::from_environment(), visible_cuda_devices(), "{device}");
  torch::manual_seed(0);
  model::IrisNet net(config);
  net->to(device);
  net->set_channels_last(o.channels_last);
  net->set_activation_checkpointing(o.activation_checkpointing);
  const long n_params = model::count_parameters(*net);

  auto opts = torch::TensorOptions().device(device);
  auto image = torch::randn({o.batch, config.in_channels, patch, patch, patch}, opts);
  auto masks = (torch::rand({o.batch, o.classes, patch, patch, patch}, opts) > 0.7).to(torch::kFloat);

  // Mixed precision as train.bf16 uses it: forward passes only.
  auto autocast = [&] { return std::make_unique<compat::AutocastGuard>(device.type(), at::kBFloat16, o.bf16); };
  net->eval();
  Json forward;
  if (o.forward)
    forward = measure(
        [&] {
          torch::NoGradGuard g;
          auto a = autocast();
          net->forward(image, image, masks);
        },
        o.warmup, o.repeats, device);

  // The paper's inference workload: one reference encoded once, then
  // `o.queries` volumes segmented for all o.classes.
  auto one_ref = image.narrow(0, 0, 1);
  auto one_masks = masks.narrow(0, 0, 1);
  auto query = torch::randn({1, config.in_channels, patch, patch, patch}, opts);
  Json inference = measure(
      [&] {
        torch::NoGradGuard g;
        auto a = autocast();
        auto task = model::encode_task(*net, one_ref, one_masks);
        for (int q = 0; q < o.queries; ++q) model::segment(*net, query, task).sigmoid();
      },
      o.warmup, o.repeats, device);

  Json stages;
  if (o.stages) {
    model::StageTimer timer([&] {
      if (device.is_cuda()) torch::cuda::synchronize(device.index());
    });
    auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < o.warmup + o.repeats; ++r) {
      if (r == o.warmup) timer.clear(), start = std::chrono::steady_clock::now();
      torch::NoGradGuard g;
      auto a = autocast();
      model::segment(*net, query, model::encode_task(*net, one_ref, one_masks)).sigmoid();
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double staged = 0;
    for (const auto& [name, s] : timer.seconds()) staged += s;
    stages = {{"workload", "one reference encoded, one query segmented"},
              {"repeats", o.repeats},
              {"total_ms", 1000.0 * wall / o.repeats},
              {"in_stages_ms", 1000.0 * staged / o.repeats},
              {"stages", Json::object()}};
    for (const auto& [name, s] : timer.seconds())
      stages["stages"][name] = {{"ms", 1000.0 * s / o.repeats}, {"share", wall > 0 ? s / wall : 0.0}};
  }

  Json train;
  if (o.backward) {
    net->train();
    train = measure(
        [&] {
          net->zero_grad();
          at::Tensor logits;
          {
            auto a = autocast();
            logits = net->forward(image, image, masks);
          }
          torch::binary_cross_entropy_with_logits(logits.to(at::kFloat), masks).backward();
        },
        o.warmup, o.repeats, device);
  }

  // Episode sampling (augmentation, crops, masks) as one loader worker does
  // it: one intra-op thread, synthetic cases of `o.volume`^3 with K blobs.
  double episodes_per_second = 0;
  if (o.episodes > 0) {
    const int threads_before = at::get_num_threads();
    at::set_num_threads(1);
    data::LoadedDataset d;
    d.name = "synthetic";
    for (int c = 0; c < 2; ++c) {
      data::CaseVolume v;
      v.name = "case" + std::to_string(c);
      v.image = torch::randn({o.volume, o.volume, o.volume});
      v.labels = torch::zeros({o.volume, o.volume, o.volume}, torch::kLong);
      for (long k = 1; k <= o.classes; ++k) {
        const long at0 = (o.volume * k) / (o.classes + 2), size = o.volume / (o.classes + 3);
        v.labels.slice(0, at0, at0 + size).slice(1, at0, at0 + size).slice(2, at0 + c, at0 + c + size).fill_(k);
        v.classes.push_back(k);
        d.class_ids[k] = k - 1;
      }
      d.cases.push_back(v);
    }
    data::EpisodeOptions eo;
    eo.patch = patch;
    eo.max_classes = o.classes;
    data::EpisodeSampler sampler({d}, eo, 0);
    sampler.sample(0, 1);  // warm-up
    const auto t0 = std::chrono::steady_clock::now();
    for (long e = 0; e < o.episodes; ++e) sampler.sample(e + 1, 1);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    episodes_per_second = o.episodes / s;
    at::set_num_threads(threads_before);
  }

  Json js = {{"tool", "iris-bench"},
           {"torch_version", TORCH_VERSION},
           {"device", device.str()},
           {"threads", at::get_num_threads()},
           {"channels_last", o.channels_last},
           {"activation_checkpointing", o.activation_checkpointing},
           {"bf16", o.bf16},
           {"config", o.config_path.empty() ? "preset:" + o.preset : o.config_path},
           {"parameters", n_params},
           {"patch", patch},
           {"batch", o.batch},
           {"classes", o.classes},
           {"queries", o.queries},
           {"repeats", o.repeats},
           {"inference_one_reference", inference}};
  if (o.forward) js["forward"] = forward;
  if (o.stages) js["stages"] = stages;
  if (o.backward) js["forward_backward"] = train;
  if (o.episodes > 0)
  js["episode_sampling"] = {
      {"episodes", o.episodes}, {"volume", o.volume}, {"episodes_per_second_per_core", number(episodes_per_second)}};
  return js;
}

Json loader_benchmark(const LoaderBenchmarkOptions& o) {
  if (o.shape.size() != 3) throw SettingError("shape", "needs three sizes: z,y,x");
  const fs::path folder = fs::temp_directory_path() / ("iris_loader_bench_" + std::to_string(::getpid()));
  fs::create_directories(folder);
  struct Cleanup {
    fs::path p;
    ~Cleanup() { fs::remove_all(p); }
  } cleanup{folder};
  const long Z = o.shape[0], Y = o.shape[1], X = o.shape[2];
  // The training path itself: cases in a data.cache folder, filled by the
  // case cache from a raw loader (here: synthetic volumes) and served back
  // by it without one, as on a GPU node. `distinct_files` volumes are made;
  // the other cases are hard links to them (disk space), so they share their
  // page cache and their one checksum verification.
  std::vector<long> classes;
  for (long k = 1; k <= o.classes; ++k) classes.push_back(k);
  const data::CaseCache cache((folder / "cache").string(), "loader benchmark");
  data::DatasetSpec spec;
  spec.name = "synthetic";
  spec.modality = "CT";
  const long most = o.case_counts.empty() ? 0 : *std::max_element(o.case_counts.begin(), o.case_counts.end());
  std::vector<data::CaseSpec> all(static_cast<size_t>(most));
  for (long i = 0; i < most; ++i) {
    all[i].name = std::to_string(i);
    all[i].image = (folder / "raw" / (all[i].name + "_0000.nii.gz")).string();  // never read
    all[i].labels = (folder / "raw" / (all[i].name + ".nii.gz")).string();
  }
  const data::CaseLoader make = [&](const data::DatasetSpec&, const data::CaseSpec& c) {
    const long f = std::stol(c.name);
    at::manual_seed(f);
    data::CaseVolume v;
    v.name = c.name;
    v.image = torch::randn({Z, Y, X});
    v.labels = torch::zeros({Z, Y, X}, torch::kByte);
    for (long k = 1; k <= o.classes; ++k) {  // organs of a few percent of the volume
      const long z0 = Z * k / (o.classes + 2), y0 = Y * k / (o.classes + 2) + f, x0 = X / 3;
      v.labels.slice(0, z0, z0 + Z / 6).slice(1, y0, y0 + Y / 5).slice(2, x0, x0 + X / 4).fill_(k);
    }
    return v;
  };
  const data::CaseLoader fill = cache.loader(make);
  const data::VolumeCache files(cache.folder());
  for (long i = 0; i < most; ++i) {
    if (i < o.distinct_files)
      fill(spec, all[i]);
    else
      fs::create_hard_link(files.path_for(cache.key_for(spec, all[i % o.distinct_files])),
                           files.path_for(cache.key_for(spec, all[i])));
  }
  const data::CaseLoader loader = cache.loader(nullptr);
  const int threads_before = at::get_num_threads();
  at::set_num_threads(1);
  Json runs = Json::array();
  std::vector<double> peaks;
  for (long n : o.case_counts) {
    reset_peak_rss();
    spec.train.assign(all.begin(), all.begin() + n);
    data::LoadOptions lo;
    lo.memory_budget_bytes = static_cast<size_t>(o.memory_gb * 1e9);
    auto t0 = Clock::now();
    auto sets = data::load_datasets({spec}, "train", loader, lo);
    const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    auto store = sets[0].store;
    data::EpisodeOptions eo;
    eo.patch = o.patch;
    eo.max_classes = o.classes;
    data::EpisodeSampler sampler(std::move(sets), eo, 0);
    sampler.sample(0, 1);
    t0 = Clock::now();
    for (long e = 0; e < o.episodes; ++e) sampler.sample(e + 1, 1);
    const double sample_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const double peak = static_cast<double>(peak_rss_bytes());
    peaks.push_back(peak);
    runs.push_back({{"cases", n},
                    {"load_seconds", number(load_s)},
                    {"episodes", o.episodes},
                    {"episodes_per_second_per_core", number(o.episodes / sample_s)},
                    {"cases_read_while_sampling", store ? static_cast<long>(store->loads()) : 0L},
                    {"peak_rss_bytes", peak}});
  }
  at::set_num_threads(threads_before);
  return {{"tool", "iris-bench"},
          {"mode", "loader"},
          {"torch_version", TORCH_VERSION},
          {"shape_zyx", o.shape},
          {"patch", o.patch},
          {"classes", o.classes},
          {"memory_gb", number(o.memory_gb)},
          {"distinct_files", o.distinct_files},
          {"runs", runs},
          {"rss_ratio_largest_to_smallest", number(peaks.empty() ? 0.0 : peaks.back() / peaks.front())}};
}

}  // namespace iris::pipeline
