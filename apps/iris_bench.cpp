// iris-bench: parameter count, forward and forward+backward time and peak
// memory of an IRIS configuration, as reproducible JSON (pipeline/benchmark.h).
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/pipeline/benchmark.h"

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-bench: time and memory of an IRIS network configuration"};
  pipeline::BenchmarkOptions o;
  std::string output;
  int threads = 0;
  app::add_config_options(cli, o.config_path, o.overrides, {"model"},
                          "the model's architecture (configs/model/*.yaml), on top of --preset");
  cli.add_option("--preset", o.preset, "model preset under --config and --set: mass, paper, small, tiny");
  cli.add_option("--patch", o.patch, "cubic patch size (default: the model's max_patch_size)")->check(CLI::Range(0L, 4096L));
  cli.add_option("--batch", o.batch, "episodes per training step")->check(CLI::Range(1, 4096));
  cli.add_option("--classes", o.classes, "classes per episode / task")->check(CLI::Range(1, 4096));
  cli.add_option("--queries", o.queries, "queries segmented with one encoded task (inference workload)")
      ->check(CLI::Range(1, 100000));
  cli.add_option("--warmup", o.warmup, "untimed runs before the timed ones")->check(CLI::Range(0, 100000))
      ->capture_default_str();
  cli.add_option("--repeats", o.repeats, "timed runs (the median is reported)")->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app::add_device_option(cli, o.device);
  app::add_threads_option(cli, threads);
  bool no_backward = false, no_forward = false;
  cli.add_flag("--no-backward", no_backward, "skip the forward+backward measurement");
  cli.add_flag("--no-forward", no_forward, "skip the plain forward measurement");
  cli.add_flag("--stages", o.stages, "time the one-shot workload stage by stage (encoder, task encoding, fusion "
               "attention, upsampling, decoder convolutions, head)");
  cli.add_flag("--bf16", o.bf16, "bf16 autocast of the forward passes (as train.bf16)");
  cli.add_option("--episodes", o.episodes,
                 "also time the episode sampler: N episodes of --patch/--classes from synthetic cases, one thread")
      ->check(CLI::Range(0L, 1000000L));
  cli.add_option("--volume", o.volume, "edge of the synthetic cases for --episodes (voxels)")->check(CLI::Range(16L, 2048L));
  // The conv layout iris-infer and iris-train run is the default.
  bool channels_first = false, channels_last = false;
  cli.add_flag("--channels-last", channels_last,
               "channels-last 3-D conv layout, as iris-infer and iris-train run (the default)");
  cli.add_flag("--channels-first", channels_first, "channels-first 3-D conv layout instead, as the author's code runs");
  bool loader = false;
  pipeline::LoaderBenchmarkOptions lo;
  cli.add_flag("--loader", loader, "measure the training loader over data larger than memory instead of a network");
  cli.add_option("--loader-cases", lo.case_counts, "case counts to compare (default 16 256)")->delimiter(',');
  cli.add_option("--loader-shape", lo.shape, "z,y,x of the synthetic cases (default 240,320,320)")->delimiter(',');
  cli.add_option("--loader-memory-gb", lo.memory_gb, "the loader's memory budget (data.cache_memory_gb)")
      ->check(CLI::Range(0.001, 1e6));
  cli.add_flag("--activation-checkpointing", o.activation_checkpointing,
               "recompute encoder stages and decoder up-steps in the backward (forward+backward only)");
  cli.add_option("--output", output, "write the JSON here as well as to stdout");
  app::name_settings({{"preset", "--preset"}, {"shape", "--loader-shape"}});
  app::name_memory_settings("--patch, --batch, --classes and the model's widths (--config, --set); "
                            "--loader: --loader-shape and --loader-memory-gb");
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);
  o.backward = !no_backward;
  o.forward = !no_forward;
  o.channels_last = !channels_first;

  return app::run_main("iris-bench", [&]() -> int {
    if (channels_first && channels_last) throw Error("--channels-first", "goes with --channels-last: give one layout");
    configure_threads(threads);
    app::keep_freed_memory();
    if (loader) {
      lo.patch = o.patch > 0 ? o.patch : 128;
      lo.classes = o.classes;
      if (o.episodes > 0) lo.episodes = o.episodes;
    }
    const std::string text = dump(loader ? pipeline::loader_benchmark(lo) : pipeline::benchmark(o), 2);
    std::cout << text;
    if (!output.empty()) write_text_file(output, text);
    return app::kOk;
  });
}
