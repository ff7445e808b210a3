// iris-bench: parameter count, forward and forward+backward time and peak
// memory of an IRIS configuration, as reproducible JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "common/app_common.h"
#include "iris/common/atomic_file.h"
#include "iris/common/device.h"
#include "iris/common/compat.h"
#include "iris/common/config_map.h"
#include "iris/common/error.h"
#include "iris/data/episodes.h"
#include "iris/model/iris_net.h"
#include "iris/model/task_embedding.h"

using namespace iris;
using Clock = std::chrono::steady_clock;

namespace {

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

struct Measurement {
  double median_ms = 0, min_ms = 0;
  long long peak_bytes = 0;
};

Measurement measure(const std::function<void()>& step, int warmup, int repeats, const torch::Device& device) {
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
  Measurement m;
  m.median_ms = median(times);
  m.min_ms = *std::min_element(times.begin(), times.end());
  m.peak_bytes = device.is_cuda() ? compat::cuda_peak_allocated_bytes(device.index()) : app::peak_rss_bytes();
  return m;
}

std::string json_measure(const Measurement& m) {
  std::ostringstream s;
  s << "{\"median_ms\": " << m.median_ms << ", \"min_ms\": " << m.min_ms << ", \"peak_bytes\": " << m.peak_bytes
    << "}";
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"iris-bench: time and memory of an IRIS network configuration"};
  std::string config_path, preset_name = "tiny", device_name = "cpu", output;
  std::vector<std::string> overrides;
  long patch = 0;
  int batch = 1, classes = 3, queries = 1, warmup = 1, repeats = 3, threads = 0;
  bool backward = true, forward_pass = true, channels_last = false, checkpointing = false, bf16 = false;
  long episodes = 0, volume = 160;
  cli.add_option("--config", config_path, "model YAML (configs/model/*.yaml)");
  cli.add_option("--preset", preset_name, "model preset when no --config: mass, paper, small, tiny");
  cli.add_option("--set", overrides, "model key=value overrides");
  cli.add_option("--patch", patch, "cubic patch size (default: the model's max_patch_size)")->check(CLI::Range(0L, 4096L));
  cli.add_option("--batch", batch, "episodes per training step")->check(CLI::Range(1, 4096));
  cli.add_option("--classes", classes, "classes per episode / task")->check(CLI::Range(1, 4096));
  cli.add_option("--queries", queries, "queries segmented with one encoded task (inference workload)")->check(CLI::Range(1, 100000));
  cli.add_option("--warmup", warmup)->check(CLI::Range(0, 100000));
  cli.add_option("--repeats", repeats)->check(CLI::Range(1, 100000));
  cli.add_option("--device", device_name, "cpu, cuda (this process's GPU) or cuda:N");
  cli.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  cli.add_flag("!--no-backward", backward, "skip the forward+backward measurement");
  cli.add_flag("!--no-forward", forward_pass, "skip the plain forward measurement");
  cli.add_flag("--bf16", bf16, "bf16 autocast of the forward passes (as train.bf16)");
  cli.add_option("--episodes", episodes,
                 "also time the episode sampler: N episodes of --patch/--classes from synthetic cases, one thread")
      ->check(CLI::Range(0L, 1000000L));
  cli.add_option("--volume", volume, "edge of the synthetic cases for --episodes (voxels)")->check(CLI::Range(16L, 2048L));
  cli.add_flag("--channels-last", channels_last, "channels-last 3-D conv layout");
  cli.add_flag("--activation-checkpointing", checkpointing,
               "recompute encoder stages and decoder up-steps in the backward (forward+backward only)");
  cli.add_option("--output", output, "write the JSON here as well as to stdout");
  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-bench", [&]() -> int {
    app::configure_threads(threads);
    ConfigMap cfg;
    cfg.set("preset", preset_name, "--preset");
    if (!config_path.empty()) cfg.merge(ConfigMap::load_yaml_file(config_path).subtree("model"));
    for (const auto& o : overrides) cfg.apply_override(o);
    auto config = model::ModelConfig::from_config(cfg);
    if (patch == 0) patch = config.max_patch_size;
    const torch::Device device =
        resolve_device(device_name, DistributedEnv::from_environment(), visible_cuda_devices(), "--device");
    torch::manual_seed(0);
    model::IrisNet net(config);
    net->to(device);
    net->set_channels_last(channels_last);
    net->set_activation_checkpointing(checkpointing);
    const long n_params = model::count_parameters(*net);

    auto opts = torch::TensorOptions().device(device);
    auto image = torch::randn({batch, config.in_channels, patch, patch, patch}, opts);
    auto masks = (torch::rand({batch, classes, patch, patch, patch}, opts) > 0.7).to(torch::kFloat);

    // Mixed precision as train.bf16 uses it: forward passes only.
    auto autocast = [&] { return std::make_unique<compat::AutocastGuard>(device.type(), at::kBFloat16, bf16); };
    net->eval();
    Measurement forward;
    if (forward_pass)
      forward = measure(
          [&] {
            torch::NoGradGuard g;
            auto a = autocast();
            net->forward(image, image, masks);
          },
          warmup, repeats, device);

    // The paper's inference workload: one reference encoded once, then
    // `queries` volumes segmented for all classes.
    auto one_ref = image.narrow(0, 0, 1);
    auto one_masks = masks.narrow(0, 0, 1);
    auto query = torch::randn({1, config.in_channels, patch, patch, patch}, opts);
    Measurement inference = measure(
        [&] {
          torch::NoGradGuard g;
          auto a = autocast();
          auto task = model::encode_task(*net, one_ref, one_masks);
          for (int q = 0; q < queries; ++q) model::segment(*net, query, task).sigmoid();
        },
        warmup, repeats, device);

    Measurement train;
    if (backward) {
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
          warmup, repeats, device);
    }

    // Episode sampling (augmentation, crops, masks) as one loader worker does
    // it: one intra-op thread, synthetic cases of `volume`^3 with K blobs.
    double episodes_per_second = 0;
    if (episodes > 0) {
      const int threads_before = at::get_num_threads();
      at::set_num_threads(1);
      data::LoadedDataset d;
      d.name = "synthetic";
      for (int c = 0; c < 2; ++c) {
        data::CaseVolume v;
        v.name = "case" + std::to_string(c);
        v.image = torch::randn({volume, volume, volume});
        v.labels = torch::zeros({volume, volume, volume}, torch::kLong);
        for (long k = 1; k <= classes; ++k) {
          const long at0 = (volume * k) / (classes + 2), size = volume / (classes + 3);
          v.labels.slice(0, at0, at0 + size).slice(1, at0, at0 + size).slice(2, at0 + c, at0 + c + size).fill_(k);
          v.classes.push_back(k);
          d.class_ids[k] = k - 1;
        }
        d.cases.push_back(v);
      }
      data::EpisodeOptions eo;
      eo.patch = patch;
      eo.max_classes = classes;
      data::EpisodeSampler sampler({d}, eo, 0);
      sampler.sample(0, 1);  // warm-up
      const auto t0 = std::chrono::steady_clock::now();
      for (long e = 0; e < episodes; ++e) sampler.sample(e + 1, 1);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      episodes_per_second = episodes / s;
      at::set_num_threads(threads_before);
    }

    std::ostringstream js;
    js << "{\n  \"tool\": \"iris-bench\",\n  \"torch_version\": \"" << TORCH_VERSION << "\",\n"
       << "  \"device\": \"" << device.str() << "\",\n  \"threads\": " << at::get_num_threads() << ",\n  \"channels_last\": " << (channels_last ? "true" : "false")
       << ",\n  \"activation_checkpointing\": " << (checkpointing ? "true" : "false")
       << ",\n  \"bf16\": " << (bf16 ? "true" : "false") << ",\n"
       << "  \"config\": \"" << (config_path.empty() ? "preset:" + preset_name : config_path) << "\",\n"
       << "  \"parameters\": " << n_params << ",\n  \"patch\": " << patch << ",\n  \"batch\": " << batch
       << ",\n  \"classes\": " << classes << ",\n  \"queries\": " << queries << ",\n  \"repeats\": " << repeats
       << ",\n  \"inference_one_reference\": " << json_measure(inference);
    if (forward_pass) js << ",\n  \"forward\": " << json_measure(forward);
    if (backward) js << ",\n  \"forward_backward\": " << json_measure(train);
    if (episodes > 0)
      js << ",\n  \"episode_sampling\": {\"episodes\": " << episodes << ", \"volume\": " << volume
         << ", \"episodes_per_second_per_core\": " << episodes_per_second << "}";
    js << "\n}\n";
    std::cout << js.str();
    if (!output.empty()) write_text_file(output, js.str());
    return 0;
  });
}
