// iris-rsna: the RSNA Intracranial Aneurysm Detection 2025 challenge (docs/rsna.md).
//   iris-rsna prepare DATA OUT [--radius-mm 4] [--split 0.8,0.1,0.1] [--seed 0]
//        the challenge folder -> nnU-Net raw folders for iris-train
//   iris-rsna predict --model M.iris (--task T.task | --reference IMG --reference-mask MASK)
//        --series DATA/series --output submission.csv [--train-csv DATA/train.csv]
//        series folders -> the submission CSV (iris-eval rsna scores it)
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "common/segmenter_options.h"
#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/label_list.h"
#include "iris/pipeline/rsna.h"

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-rsna: the RSNA 2025 intracranial aneurysm challenge, from its folders to a scored submission"};
  cli.require_subcommand(1);

  pipeline::RsnaPrepareOptions prep;
  std::string data, out, split_text = "0.8,0.1,0.1";
  auto* prepare = cli.add_subcommand("prepare", "the challenge folder (series/, train.csv, train_localizers.csv, "
                                                "segmentations/) -> nnU-Net raw folders for iris-train");
  prepare->add_option("DATA", data, "the challenge folder as downloaded")->required();
  prepare->add_option("OUT", out, "folder to write the datasets into (created; the datasets in it must not exist)")
      ->required();
  prepare->add_option("--radius-mm", prep.radius_mm, "radius of the sphere each localizer becomes")
      ->check(app::number_in(0.1, 100));
  prepare->add_option("--split", split_text, "train,val,test fractions of the split by series");
  prepare->add_option("--seed", prep.seed, "seed of the split");
  prepare->add_option("--frame-base", prep.frame_base, "the first frame's number in the localizers' 'f' (0 or 1)")
      ->check(CLI::Range(0L, 1L));

  pipeline::RsnaPredictOptions pred;
  std::string series, output, report_path;
  app::SegmenterFlags flags{&pred.models, &pred.task, &pred.segmenter, &pred.model_weights};
  auto* predict = cli.add_subcommand("predict", "series folders -> the submission CSV (one row per series)");
  flags.reference_mask_help = "its aneurysm spheres (from prepare); label v = location v";
  flags.labels_help = "locations (label values 1-13) to segment (default: all of the reference)";
  flags.task_help = "stored task embedding (label v = location v)";
  app::add_model_and_reference_options(*predict, flags);
  app::add_window_options(*predict, flags);
  predict->add_option("--series", series, "folder of series folders (DATA/series)")->required();
  predict->add_option("--output", output, "the submission CSV to write")->required();
  predict->add_option("--train-csv", pred.train_csv, "train.csv: its column means are the priors of locations the task "
                      "lacks and of series that fail (default 0.5)");
  predict->add_option("--smoothing", pred.scoring.smoothing, "box filter edge over each map, odd (1: none)")
      ->check(CLI::Range(1L, 31L));
  predict->add_option("--quantile", pred.scoring.quantile, "a location's probability: this quantile of its map (1: max)")
      ->check(app::number_in(1e-6, 1.0));
  predict->add_option("--present", pred.scoring.present, "'Aneurysm Present' from the locations")
      ->check(CLI::IsMember({"max", "noisy-or", "mean"}));
  predict->add_option("--num-parts", pred.num_parts, "split the series into this many parts (array jobs)")
      ->check(CLI::Range(1L, 100000L));
  predict->add_option("--part-id", pred.part_id, "the part this run takes")->check(CLI::NonNegativeNumber);
  predict->add_option("--report", report_path, "write a JSON report (per series: seconds, numbers or the error)");
  app::name_settings({{"radius_mm", "--radius-mm"}, {"series", "--series"},     {"output", "--output"},
                      {"smoothing", "--smoothing"}, {"quantile", "--quantile"}, {"present", "--present"},
                      {"num_parts", "--num-parts"}, {"part_id", "--part-id"}});
  app::name_memory_settings("--window, --window-batch and --classes-per-pass, and the series' size");
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);

  if (prepare->parsed())
    return app::run_main("iris-rsna", [&]() -> int {
      const auto parts = split_comma_list(split_text);
      if (parts.size() != 3) throw Error("--split", "needs three fractions train,val,test (" + split_text + ")");
      for (size_t i = 0; i < 3; ++i) {
        size_t used = 0;
        try {
          prep.split[i] = std::stod(parts[i], &used);
        } catch (const std::exception&) {
        }
        if (used != parts[i].size() || !(prep.split[i] >= 0)) throw Error("--split", "'" + parts[i] + "' is not a fraction");
      }
      prep.note = [](const std::string& n) { app::Info() << "iris-rsna prepare: " << n; };
      if (app::show_progress())
        prep.progress = [](long done, long total, const std::string& s) {
          std::cerr << "\r  series " << done << "/" << total << " " << s << (done == total ? "\n" : "") << std::flush;
        };
      const auto s = pipeline::rsna_prepare(data, out, prep);
      app::Info() << "iris-rsna prepare: " << s.series << " series (" << s.positive_series << " with aneurysms, "
                  << s.spheres << " spheres), " << s.vessel_cases << " vessel segmentations";
      for (const auto& f : s.folders) app::Info() << "iris-rsna prepare: wrote " << f;
      return app::kOk;
    });

  return app::run_main("iris-rsna", [&]() -> int {
    app::apply_segmenter_options(flags);
    if (app::show_progress())
      pred.progress = [](long done, long total, const std::string& s, double left) {
        std::cerr << "\r  series " << done << "/" << total << " " << s << "  ETA " << static_cast<long>(left) << " s"
                  << (done == total ? "\n" : "") << std::flush;
      };
    const auto s = pipeline::rsna_predict(series, output, pred);
    if (!report_path.empty()) write_text_file(report_path, dump(s.report, 2) + "\n");
    app::Info() << "iris-rsna predict: " << output << ": " << s.series << " series, " << s.failed
                << " failed (given the priors)";
    for (const auto& e : s.report["series"])
      if (e.contains("error")) log::warn("iris-rsna predict: " + e["series"].get<std::string>() + ": " +
                                         e["error"].get<std::string>());
    return s.failed == s.series ? app::kFailure : s.failed > 0 ? app::kSomeFailed : app::kOk;
  });
}
