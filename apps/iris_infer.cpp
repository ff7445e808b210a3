// iris-infer: segment query volumes with an in-context task given by
// reference pairs, a stored task embedding, memory-bank class names, a pool of
// references (retrieval) or tuned on the references (in-context tuning).
//   iris-infer --model M.iris --reference IMG --reference-mask LABELS --query IMG --output OUT
//   iris-infer encode --model M.iris --reference IMG --reference-mask LABELS --output T.task
//   iris-infer pool --model M.iris --reference IMG... --reference-mask LABELS... --output DIR
//   iris-infer --model M.iris --strategy retrieval --pool DIR --query IMG --output OUT
//   iris-infer --model M.iris --strategy tuning --tune-steps 100 --reference ... --query ... --output ...
// The pipeline is infer::Segmenter (include/iris/infer/segmenter.h); this
// program maps flags onto it.
#include <filesystem>
#include <chrono>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "common/segmenter_options.h"
#include "iris/common/atomic_file.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/label_list.h"
#include "iris/common/json.h"
#include "iris/common/log.h"
#include "iris/infer/segmenter.h"
#include "iris/io/intensity.h"

using namespace iris;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  CLI::App cli{"iris-infer: in-context segmentation of 3-D medical images"};
  cli.require_subcommand(0, 1);
  infer::TaskSpec task;          // flags bind straight into the library's
  infer::SegmenterOptions opt;   // structs; what needs parsing is below
  infer::PlanOptions plan;
  infer::QueryReadOptions read;
  std::vector<std::string> model_paths;
  std::vector<double> weights;
  app::SegmenterFlags flags{&model_paths, &task, &opt, &weights};
  std::string query, output, classes_text, report_path, statistics_path;
  std::string similarity_name = "all-tokens";

  auto add_reference_options = [&](CLI::App* app) {
    app::add_model_and_reference_options(*app, flags);
    app::add_verbosity(*app);
  };
  add_reference_options(&cli);
  app::add_window_options(cli, flags);
  cli.add_option("--strategy", task.strategy, "one-shot, ensemble, memory-bank, retrieval, image-retrieval or tuning "
                 "(default: from the inputs)")->check(CLI::IsMember(infer::strategy_names()));
  cli.add_option("--classes", classes_text, "memory-bank class names, e.g. brain,ventricles");
  cli.add_option("--pool", task.pool_dir, "folder of encoded references for retrieval (from iris-infer pool)");
  cli.add_option("--similarity", similarity_name, "object retrieval compares all-tokens or foreground-token")
      ->check(CLI::IsMember({"all-tokens", "foreground-token"}));
  cli.add_option("--seed", task.seed, "seed for the random initial pool reference of retrieval");
  cli.add_option("--tune-steps", task.tuning.steps, "in-context tuning: optimiser steps (per class group with "
                 "--classes-per-pass)")->check(CLI::NonNegativeNumber);
  cli.add_option("--tune-lr", task.tuning.learning_rate, "in-context tuning: learning rate")->check(app::number_in(1e-12, 1e6));
  cli.add_flag("--tune-adamw", task.tuning.adamw, "in-context tuning with AdamW instead of Adam");
  std::string tune_loss;
  cli.add_option("--tune-loss", tune_loss, "in-context tuning: the region term added to BCE, soft_dice or "
                 "adaptive_tversky (default: the loss the model was trained with, as its file records; soft_dice "
                 "where it records none)")->check(CLI::IsMember({"soft_dice", "adaptive_tversky"}));
  cli.add_option("--tuned-task-out", task.tuned_task_out, "store the tuned task embedding here");
  cli.add_option("--query", query, "image file, DICOM folder, folder of images or .txt list");
  cli.add_option("--nan-as", read.nan_as, "replace NaN and infinite voxels of queries by this value (default: refuse "
                 "them)")->check(app::finite_number());
  cli.add_option("--series", read.series, "one DICOM SeriesInstanceUID of the query folder (default: every series of a "
                 "study, each a case)");
  std::string series_filter;
  cli.add_option("--series-filter", series_filter, "which series of a DICOM study are queries: "
                 "modality=CT,description=REGEX,min-slices=N");
  cli.add_option("--reference-modality", task.reference_modality, "modality of the references (CT, MR, ...)");
  cli.add_option("--query-modality", read.modality, "modality of the queries; a mismatch is warned about");
  cli.add_option("--output", output, "label map (file, or folder for several queries)");
  cli.add_option("--probabilities", plan.probabilities, "per-class sigmoid maps as a 4-D float32 image (file, or "
                 "folder for several queries)");
  cli.add_option("--dicom-seg", plan.dicom_seg, "also write a DICOM-SEG referencing the query series (query: one "
                 "DICOM folder)");
  cli.add_flag("--fast", opt.fast, "run at the coarser spacing the model stores (preprocess.fast_spacing)");
  bool no_skull_strip = false;
  cli.add_flag("--no-skull-strip", no_skull_strip,
               "skip the skull-strip step the model file stores (iris-import --skull-strip-task): for inputs "
               "already stripped");
  cli.add_option("--threshold", opt.threshold, "probability a class needs to claim a voxel")->check(app::number_in(0.0, 1.0));
  cli.add_flag("--keep-largest", opt.post.keep_largest, "keep only the largest connected component of each class");
  cli.add_option("--min-component-voxels", opt.post.min_component_voxels, "remove components with fewer voxels")
      ->check(CLI::NonNegativeNumber);
  bool aggregate_on_cpu = false, aggregate_on_device = false;
  cli.add_flag("--aggregate-on-cpu", aggregate_on_cpu,
               "blend the windows in host memory (default: on a GPU --device when the sums fit beside the windows, "
               "docs/inference.md)");
  cli.add_flag("--no-aggregate-on-cpu", aggregate_on_device, "blend the windows on the GPU --device, however large");
  cli.add_flag("--tta", opt.mirror_tta, "mirroring test-time augmentation along the axes the model was trained mirror-invariant on (train.augment_mirror; refused for a model without them)");
  cli.add_flag("--smooth-labels", opt.smooth_labels, "label the probabilities inverted onto the query's grid "
               "(linear) instead of inverting the labels (nearest); more memory");
  cli.add_option("--report", report_path, "write a JSON run report (timings, memory, choices)");
  cli.add_option("--statistics", statistics_path, "per case and class: voxels, volume, intensity inside the mask, "
                 "centroid, box, components (.json or .csv)");
  cli.add_option("--num-parts", plan.num_parts, "split the queries into this many parts (array jobs)")->check(CLI::Range(1L, 100000L));
  cli.add_option("--part-id", plan.part_id, "the part this run takes, 0..num-parts-1")->check(CLI::NonNegativeNumber);
  cli.add_flag("--overwrite", plan.overwrite, "replace existing outputs of a folder or list of queries");
  cli.add_flag("--continue", plan.skip_finished, "skip queries whose outputs exist (a rerun after an interruption)");
  app::name_settings({{"strategy", "--strategy"},       {"classes", "--classes"},
                      {"pool_dir", "--pool"},           {"tuned_task_out", "--tuned-task-out"},
                      {"tune_loss", "--tune-loss"},     {"fast", "--fast"},
                      {"mirror_tta", "--tta"},          {"no_skull_strip", "--no-skull-strip"},
                      {"query", "--query"},             {"output", "--output"},
                      {"probabilities", "--probabilities"}, {"dicom_seg", "--dicom-seg"},
                      {"num_parts", "--num-parts"},     {"part_id", "--part-id"},
                      {"overwrite", "--overwrite"},     {"skip_finished", "--continue"},
                      {"series", "--series"},           {"nan_as", "--nan-as"}});
  app::name_memory_settings("--window, --window-batch and --classes-per-pass (stitching on the GPU: "
                            "--aggregate-on-cpu), and the query's size");

  // --help in groups, defaults shown, two examples at the end.
  const std::vector<std::pair<std::string, std::vector<std::string>>> groups{
      {"Input", {"--query", "--series", "--series-filter", "--nan-as", "--query-modality", "--reference-modality"}},
      {"Task", {"--model", "--reference", "--reference-mask", "--labels", "--max-labels", "--task", "--classes",
                "--model-weights"}},
      {"Strategy", {"--strategy", "--pool", "--similarity", "--seed", "--tune-steps", "--tune-lr", "--tune-adamw",
                    "--tune-loss", "--tuned-task-out", "--classes-per-pass"}},
      {"Preprocessing and windows", {"--preprocess", "--fast", "--no-skull-strip", "--window", "--overlap", "--tta",
                                     "--threshold", "--keep-largest", "--min-component-voxels", "--smooth-labels"}},
      {"Output", {"--output", "--probabilities", "--dicom-seg", "--report", "--statistics", "--overwrite", "--continue",
                  "--num-parts", "--part-id"}},
      {"Performance", {"--device", "--threads", "--window-batch", "--bf16", "--aggregate-on-cpu",
                       "--no-aggregate-on-cpu"}}};
  for (CLI::Option* o : cli.get_options()) {
    for (const auto& [group, names] : groups)
      for (const auto& n : names)
        if (o->check_lname(n.substr(2))) o->group(group);
  }
  for (const char* shown : {"--threshold", "--tune-steps", "--tune-lr", "--similarity", "--seed"})
    if (CLI::Option* o = cli.get_option_no_throw(shown)) o->capture_default_str();
  cli.footer(
      "Examples:\n"
      "  iris-infer --model models/demo_brain.iris --reference ref.nii.gz --reference-mask ref_labels.nii.gz \\\n"
      "             --query scan.nii.gz --output labels.nii.gz\n"
      "  iris-infer --model liver.iris --task liver.task --query dicom_study/ --output out/ --dicom-seg segs/ \\\n"
      "             --device cuda --bf16 --continue");

  CLI::App* encode = cli.add_subcommand("encode", "encode reference pairs into a stored task embedding");
  std::string encode_output, pool_output;
  add_reference_options(encode);
  encode->add_option("--output", encode_output, "task embedding file to write")->required();
  CLI::App* pool_cmd = cli.add_subcommand("pool", "encode each reference pair into a retrieval pool folder");
  add_reference_options(pool_cmd);
  pool_cmd->add_option("--output", pool_output, "pool folder to write (<name>.task + <name>.features)")->required();
  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-infer", [&]() -> int {
    app::apply_segmenter_options(flags);
    app::keep_freed_memory();
    task.classes = split_comma_list(classes_text);
    task.similarity = similarity_name == "foreground-token" ? infer::EmbeddingSimilarity::foreground_token
                                                           : infer::EmbeddingSimilarity::all_tokens;
    opt.skull_strip = !no_skull_strip;
    if (!tune_loss.empty()) task.tune_loss = model::parse_region_loss(tune_loss, "--tune-loss");
    if (aggregate_on_device && aggregate_on_cpu)
      throw Error("--no-aggregate-on-cpu", "contradicts --aggregate-on-cpu: give one");
    if (aggregate_on_device && !opt.device.is_cuda())
      throw Error("--no-aggregate-on-cpu", "blends on a GPU: it needs --device cuda (the device is " +
                                                         opt.device.str() + ")");
    opt.stitching = aggregate_on_cpu      ? infer::Stitching::host
                    : aggregate_on_device ? infer::Stitching::device
                                          : infer::Stitching::automatic;
    if (app::show_progress()) {
      opt.window_progress = [](long done, long total) {
        std::cerr << "\r  windows " << done << "/" << total << (done == total ? "\n" : "") << std::flush;
      };
      opt.tuning_progress = [](long step, long total, double loss) {
        std::cerr << "\r  tuning step " << step << "/" << total << " loss " << loss << (step == total ? "\n" : "")
                  << std::flush;
      };
    }
    if (encode->parsed() || pool_cmd->parsed()) {
      if (task.references.empty()) throw Error("--reference", "encode and pool need at least one reference pair");
      if (model_paths.size() > 1) throw Error("--model", "encode and pool take one model (a task belongs to its model)");
      if (pool_cmd->parsed()) task.strategy = "retrieval";
      infer::Segmenter segmenter(model_paths[0], task, opt);
      if (encode->parsed()) segmenter.task().save(encode_output);
      else segmenter.pool().save(pool_output);
      app::Info() << "iris-infer: wrote " << (encode->parsed() ? encode_output : pool_output);
      return 0;
    }

    // Every query and output is checked before the model is loaded.
    plan.series = read.series;
    if (!series_filter.empty()) plan.series_filter = infer::SeriesFilter::parse(series_filter, "--series-filter");
    std::vector<infer::SkippedQuery> skipped;
    const auto jobs = infer::plan_queries(query, output, plan, &skipped);
    long finished = 0;
    for (const auto& q : skipped) {
      finished += q.reason.rfind("finished", 0) == 0;
      log::info("iris-infer: skipped " + q.input + ": " + q.reason);
    }
    if (finished > 0) app::Info() << "iris-infer: " << finished << " queries already done (--continue)";
    const std::string statistics_format = fs::path(statistics_path).extension().string();
    if (!statistics_path.empty() && statistics_format != ".json" && statistics_format != ".csv")
      throw Error("--statistics", "name a .json or .csv file (" + statistics_path + ")");
    opt.statistics = !statistics_path.empty();
    opt.probabilities = !plan.probabilities.empty();
    infer::Segmenter segmenter(model_paths, task, opt, weights);
    // One line per finished case; with several, its place, the rate and the
    // time left (as iris-train reports its iterations).
    const auto started = std::chrono::steady_clock::now();
    long done = 0;
    const long total = static_cast<long>(jobs.size());
    segmenter.segment_files(jobs, read, [&](const infer::QueryJob& job) {
      ++done;
      app::Info line;
      line << "iris-infer: ";
      if (total > 1) {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        const double per_case = elapsed / static_cast<double>(done);
        char text[96];
        std::snprintf(text, sizeof text, "case %ld/%ld (%.1f s/case, ETA %s) ", done, total, per_case,
                      app::format_duration(per_case * static_cast<double>(total - done)).c_str());
        line << text;
      }
      line << job.input << " -> " << job.output << (job.dicom_seg.empty() ? "" : " and " + job.dicom_seg + " (DICOM-SEG)");
    });
    if (!statistics_path.empty())
      write_text_file(statistics_path, statistics_format == ".csv"
                                           ? infer::statistics_csv(segmenter.statistics())
                                           : dump(infer::statistics_json(segmenter.statistics()), 2) + "\n");
    if (!report_path.empty()) {
      Json report = segmenter.report();
      report["skipped"] = Json::array();
      for (const auto& q : skipped) report["skipped"].push_back({{"input", q.input}, {"reason", q.reason}});
      write_text_file(report_path, dump(report, 2));
    }
    if (!segmenter.failed().empty()) {
      for (const auto& f : segmenter.failed()) log::warn("iris-infer: failed " + f.input + ": " + f.error);
      log::warn("iris-infer: " + std::to_string(segmenter.failed().size()) + " of " + std::to_string(jobs.size()) +
                " queries failed; the others are done" + (report_path.empty() ? "" : " (listed in " + report_path + ")"));
      return app::kSomeFailed;
    }
    return 0;
  });
}
