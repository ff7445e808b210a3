// iris-infer: segment query volumes with an in-context task given by
// reference pairs, a stored task embedding, memory-bank class names, a pool of
// references (retrieval) or tuned on the references (in-context tuning).
//   iris-infer --model M.iris --reference IMG --reference-mask LABELS --query IMG --output OUT
//   iris-infer encode --model M.iris --reference IMG --reference-mask LABELS --output T.task
//   iris-infer pool --model M.iris --reference IMG... --reference-mask LABELS... --output DIR
//   iris-infer --model M.iris --strategy retrieval --pool DIR --query IMG --output OUT
//   iris-infer --model M.iris --strategy tuning --tune-steps 100 --reference ... --query ... --output ...
// All aggregation of window predictions (sums, weights, argmax, components)
// happens in CPU memory whatever --device is; --aggregate-on-cpu says so.
#include <algorithm>
#include <cctype>
#include <random>
#include <chrono>
#include <filesystem>
#include <limits>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/types.h>

#include "common/app_common.h"
#include "iris/common/atomic_file.h"
#include "iris/common/device.h"
#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/io/intensity.h"
#include "iris/infer/connected_components.h"
#include "iris/infer/reference.h"
#include "iris/infer/retrieval.h"
#include "iris/infer/sliding_window.h"
#include "iris/infer/tuning.h"
#include "iris/io/dicom.h"
#include "iris/io/dicom_seg.h"
#include "iris/io/image_io.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_file.h"

using namespace iris;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Timings {
  std::vector<std::pair<std::string, double>> stages;
  void add(const std::string& name, Clock::time_point since) {
    const double s = std::chrono::duration<double>(Clock::now() - since).count();
    for (auto& st : stages)
      if (st.first == name) {
        st.second += s;
        return;
      }
    stages.emplace_back(name, s);
  }
};


std::vector<long> parse_label_list(const std::string& text) {
  std::vector<long> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      out.push_back(std::stol(item));
    } catch (const std::exception&) {
      throw Error("--labels", "'" + item + "' is not an integer label value");
    }
  }
  return out;
}

std::vector<std::string> split_names(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

bool is_image_file(const fs::path& p) {
  const std::string name = p.filename().string();
  for (const char* ext : {".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"}) {
    const std::string e(ext);
    if (name.size() > e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

std::string case_name(const fs::path& p) {
  std::string name = p.filename().string();
  for (const char* ext : {".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"}) {
    const std::string e(ext);
    if (name.size() > e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0)
      return name.substr(0, name.size() - e.size());
  }
  return name;
}

// A query is a file, a DICOM folder, a folder of image files, or a text file
// listing image paths (.txt). Returns (input path, output path) pairs.
std::vector<std::pair<std::string, std::string>> plan_queries(const std::string& query, const std::string& output) {
  std::vector<std::string> inputs;
  bool batch = false;
  if (fs::is_directory(query)) {
    for (const auto& e : fs::directory_iterator(query))
      if (e.is_regular_file() && is_image_file(e.path())) inputs.push_back(e.path().string());
    std::sort(inputs.begin(), inputs.end());
    batch = !inputs.empty();
    if (!batch) inputs.push_back(query);  // a DICOM series folder
  } else if (fs::path(query).extension() == ".txt") {
    std::ifstream f(query);
    if (!f) throw Error(query, "cannot open the query list");
    std::string line;
    while (std::getline(f, line))
      if (!line.empty()) inputs.push_back(line);
    if (inputs.empty()) throw Error(query, "the query list is empty");
    batch = true;
  } else {
    if (!fs::exists(query)) throw Error(query, "query does not exist");
    inputs.push_back(query);
  }
  std::vector<std::pair<std::string, std::string>> plan;
  if (!batch) {
    plan.emplace_back(inputs[0], output);
    return plan;
  }
  if (!fs::is_directory(output))
    throw Error(output, "several queries need --output to be an existing folder");
  for (const auto& in : inputs) plan.emplace_back(in, (fs::path(output) / (case_name(in) + ".nii.gz")).string());
  return plan;
}

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Modality of an input: the flag when given, else the DICOM Modality tag of a
// DICOM folder, else "" (unknown: NIfTI and friends do not record it).
std::string input_modality(const std::string& path, const std::string& flag, const std::string& series) {
  if (!flag.empty()) return upper(flag);
  if (!fs::is_directory(path)) return "";
  for (const auto& info : io::list_dicom_series(path))
    if (series.empty() || info.uid == series || info.series_instance_uid == series) return upper(info.modality);
  return "";
}

const std::vector<std::string> kStrategies{"one-shot", "ensemble", "memory-bank", "retrieval", "image-retrieval",
                                           "tuning"};

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"iris-infer: in-context segmentation of 3-D medical images"};
  cli.require_subcommand(0, 1);
  std::string model_path, query, output, probabilities, task_path, labels_text, classes_text, series;
  std::string preprocess = "model", device_name = "cpu", report_path, strategy, pool_dir, tuned_task_out;
  std::string reference_modality, query_modality, similarity_name = "all-tokens";
  std::string dicom_seg_path;
  std::vector<std::string> references, reference_masks;
  double overlap = 0.5, threshold = 0.5, tune_lr = infer::TuningOptions{}.learning_rate;
  long window = 0, window_batch = 1, tune_steps = infer::TuningOptions{}.steps, min_component_voxels = 0, classes_per_pass = 0;
  unsigned seed = 0;
  int threads = 0;
  long max_labels = 255;
  double nan_as = std::numeric_limits<double>::quiet_NaN();
  bool tta = false, keep_largest = false, aggregate_on_cpu = true, tune_adamw = false;

  auto add_reference_options = [&](CLI::App* app) {
    app->add_option("--model", model_path, "iris model file (.iris), required");
    app->add_option("--reference", references, "reference image (repeat for a context ensemble)");
    app->add_option("--reference-mask", reference_masks, "reference label map, one per --reference");
    app->add_option("--labels", labels_text, "label values to segment, e.g. 1,3 (default: all in the reference)");
    app->add_option("--preprocess", preprocess, "model (the preprocessing stored in the model file: reorient, resample, crop, intensity, inverted on output), none, or an intensity scheme only: zscore, mr, ct, ct-brain, ct-abdomen");
    app::add_device_option(*app, device_name);
    app->add_option("--max-labels", max_labels,
                    "refuse a reference mask with more distinct label values than this (default 255)")
        ->check(CLI::Range(1L, 100000L));
    app::add_threads_option(*app, threads);
    app::add_verbosity(*app);
    app->add_option("--classes-per-pass", classes_per_pass,
                    "encode (each group from its own reference window) and segment this many classes at a time "
                    "(default: all together)")
        ->check(CLI::NonNegativeNumber);
  };
  add_reference_options(&cli);
  cli.add_option("--strategy", strategy,
                 "one-shot, ensemble, memory-bank, retrieval, image-retrieval or tuning (default: from the inputs)")
      ->check(CLI::IsMember(kStrategies));
  cli.add_option("--task", task_path, "stored task embedding (from iris-infer encode)");
  cli.add_option("--classes", classes_text, "memory-bank class names, e.g. brain,ventricles");
  cli.add_option("--pool", pool_dir, "folder of encoded references for retrieval (from iris-infer pool)");
  cli.add_option("--similarity", similarity_name, "object retrieval compares all-tokens or foreground-token")
      ->check(CLI::IsMember({"all-tokens", "foreground-token"}));
  cli.add_option("--seed", seed, "seed for the random initial pool reference of retrieval");
  cli.add_option("--tune-steps", tune_steps, "in-context tuning: optimiser steps (per class group with --classes-per-pass)")->check(CLI::NonNegativeNumber);
  cli.add_option("--tune-lr", tune_lr, "in-context tuning: learning rate")->check(app::number_in(1e-12, 1e6));
  cli.add_flag("--tune-adamw", tune_adamw, "in-context tuning with AdamW instead of Adam");
  cli.add_option("--tuned-task-out", tuned_task_out, "store the tuned task embedding here");
  cli.add_option("--query", query, "image file, DICOM folder, folder of images or .txt list");
  cli.add_option("--nan-as", nan_as, "replace NaN and infinite voxels of queries by this value (default: refuse them)")
      ->check(app::finite_number());
  cli.add_option("--series", series, "DICOM SeriesInstanceUID when the folder holds several series");
  cli.add_option("--reference-modality", reference_modality, "modality of the references (CT, MR, ...)");
  cli.add_option("--query-modality", query_modality, "modality of the queries; a mismatch is warned about");
  cli.add_option("--output", output, "label map (file, or folder for several queries)");
  cli.add_option("--probabilities", probabilities, "per-class sigmoid maps as a 4-D float32 image");
  cli.add_option("--dicom-seg", dicom_seg_path,
                 "also write the label map as a DICOM-SEG referencing the query series (query: one DICOM folder)");
  cli.add_option("--overlap", overlap, "sliding-window overlap")->check(app::number_in(0.0, 0.95));
  cli.add_option("--window", window, "sliding-window edge (default: the model's patch size)")->check(CLI::NonNegativeNumber);
  cli.add_option("--window-batch", window_batch, "windows per network call")->check(CLI::Range(1L, 4096L));
  cli.add_option("--threshold", threshold, "probability a class needs to claim a voxel")->check(app::number_in(0.0, 1.0));
  cli.add_flag("--keep-largest", keep_largest, "keep only the largest connected component of each class");
  cli.add_option("--min-component-voxels", min_component_voxels, "remove components with fewer voxels")
      ->check(CLI::NonNegativeNumber);
  cli.add_flag("--aggregate-on-cpu,!--no-aggregate-on-cpu", aggregate_on_cpu,
               "blend windows in CPU memory (always the case: only windows go to the device)");
  cli.add_flag("--tta", tta, "mirroring test-time augmentation (8 flips)");
  cli.add_option("--report", report_path, "write a JSON run report (timings, memory, choices)");

  CLI::App* encode = cli.add_subcommand("encode", "encode reference pairs into a stored task embedding");
  std::string encode_output;
  add_reference_options(encode);
  encode->add_option("--output", encode_output, "task embedding file to write")->required();

  CLI::App* pool_cmd = cli.add_subcommand("pool", "encode each reference pair into a retrieval pool folder");
  std::string pool_output;
  add_reference_options(pool_cmd);
  pool_cmd->add_option("--output", pool_output, "pool folder to write (<name>.task + <name>.features)")->required();

  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-infer", [&]() -> int {
    app::configure_threads(threads);
    if (model_path.empty()) throw Error("--model", "is required");
    if (!aggregate_on_cpu)
      throw Error("--no-aggregate-on-cpu", "not supported: window predictions are always blended on the CPU");
    Timings timings;
    std::vector<std::string> warnings;
    auto warn = [&](const std::string& message) {
      log::warn(message);
      warnings.push_back(message);
    };
    auto t0 = Clock::now();
    model::IrisModel model = model::load_model(model_path);
    const c10::Device device =
        resolve_device(device_name, DistributedEnv::from_environment(), visible_cuda_devices(), "--device");
    model.net->to(device);
    model.net->set_channels_last(true);
    model.net->eval();
    timings.add("load_model", t0);

    // --preprocess model: the model's own spatial steps run on every input
    // and are inverted on every output; the intensity step is applied by
    // the rest of the pipeline through `preprocess`.
    std::optional<io::PreprocessConfig> spatial;
    if (preprocess == "model") {
      if (model.preprocess.empty()) {
        preprocess = "none";
      } else {
        spatial = io::PreprocessConfig::from_config(ConfigMap::parse_text(model.preprocess, model_path + " (preprocess)"));
        preprocess = spatial->intensity;
        spatial->intensity = "none";
      }
    }
    auto to_model_space = [&](const io::Image& image) {
      io::PreprocessedImage pre = io::preprocess(image, *spatial);
      io::Image out;
      out.voxels = pre.voxels;
      out.geometry = pre.geometry;
      out.source = image.source;
      out.warnings = image.warnings;
      return std::make_pair(out, pre);
    };

    if (references.size() != reference_masks.size())
      throw Error("--reference-mask", "give one --reference-mask per --reference (" + std::to_string(references.size()) +
                                          " images, " + std::to_string(reference_masks.size()) + " masks)");
    const std::vector<long> requested = parse_label_list(labels_text);
    std::vector<long> labels;  // label values of the task, fixed by the first reference
    struct ReferencePair {
      io::Image image, mask;
    };
    auto read_reference = [&](size_t i) {
      auto t = Clock::now();
      ReferencePair pair{io::read_image(references[i]), io::read_labels(reference_masks[i])};
      // Counted before anything per label is made (resampling, masks).
      infer::reference_label_values(pair.mask, labels.empty() ? requested : labels, max_labels);
      if (spatial) {
        io::check_same_grid(pair.image, pair.mask);
        auto [image, pre] = to_model_space(pair.image);
        io::PreprocessedImage mask = io::preprocess_labels(pair.mask, pre);
        pair.image = image;
        pair.mask.voxels = mask.voxels;
        pair.mask.geometry = mask.geometry;
      }
      for (const auto& w : pair.image.warnings) warn(references[i] + ": " + w);
      timings.add("read", t);
      const auto values = infer::reference_label_values(pair.mask, labels.empty() ? requested : labels, max_labels);
      if (labels.empty()) labels = values;
      return pair;
    };
    auto encode_one = [&](const ReferencePair& pair) {
      auto t = Clock::now();
      auto task = infer::encode_reference(*model.net, pair.image, pair.mask, labels, preprocess, device,
                                          model.fingerprint, classes_per_pass);
      timings.add("encode", t);
      return task;
    };
    auto encode_from_references = [&]() {
      std::vector<model::TaskEmbedding> tasks;
      for (size_t i = 0; i < references.size(); ++i) tasks.push_back(encode_one(read_reference(i)));
      return model::TaskEmbedding::mean(tasks);
    };
    auto pool_from_references = [&]() {
      infer::EmbeddingPool pool;
      for (size_t i = 0; i < references.size(); ++i) {
        ReferencePair pair = read_reference(i);
        auto t = Clock::now();
        pool.entries.push_back(infer::encode_pool_entry(*model.net, pair.image, pair.mask, labels, preprocess, device,
                                                        model.fingerprint, classes_per_pass));
        timings.add("encode", t);
        std::string name = case_name(references[i]);
        for (const auto& e : pool.entries)
          if (&e != &pool.entries.back() && e.name == name) name += "_" + std::to_string(i);
        pool.entries.back().name = name;
      }
      return pool;
    };

    if (encode->parsed()) {
      if (references.empty()) throw Error("--reference", "encode needs at least one reference pair");
      model::TaskEmbedding task = encode_from_references();
      task.save(encode_output);
      app::Info() << "iris-infer: wrote " << task.num_classes() << "-class task embedding to " << encode_output;
      return 0;
    }
    if (pool_cmd->parsed()) {
      if (references.empty()) throw Error("--reference", "pool needs at least one reference pair");
      infer::EmbeddingPool pool = pool_from_references();
      pool.save(pool_output);
      app::Info() << "iris-infer: wrote a pool of " << pool.entries.size() << " references to " << pool_output;
      return 0;
    }

    // The strategy follows from the inputs unless given.
    if (strategy.empty()) {
      if (!classes_text.empty()) strategy = "memory-bank";
      else if (!pool_dir.empty()) strategy = "retrieval";
      else if (references.size() > 1) strategy = "ensemble";
      else strategy = "one-shot";
    }
    const bool retrieval = strategy == "retrieval" || strategy == "image-retrieval";
    if (strategy == "memory-bank") {
      if (classes_text.empty()) throw Error("--strategy memory-bank", "needs --classes");
      if (!references.empty() || !task_path.empty() || !pool_dir.empty())
        throw Error("--strategy memory-bank", "takes its task from --classes only");
    } else if (!classes_text.empty()) {
      throw Error("--classes", "only with --strategy memory-bank");
    }
    if (strategy == "one-shot" || strategy == "ensemble") {
      if ((!references.empty()) + (!task_path.empty()) != 1)
        throw Error("iris-infer", "give exactly one task source: --reference/--reference-mask, --task or --classes");
      if (strategy == "one-shot" && references.size() > 1)
        throw Error("--strategy one-shot", "takes one --reference (several make a context ensemble: --strategy ensemble)");
    }
    if (retrieval && references.empty() && pool_dir.empty())
      throw Error("--strategy " + strategy, "needs --pool and/or reference pairs to choose from");
    if (strategy == "tuning" && references.empty())
      throw Error("--strategy tuning", "needs labelled examples: --reference/--reference-mask");
    if (!pool_dir.empty() && !retrieval) throw Error("--pool", "only with --strategy retrieval or image-retrieval");
    if (!tuned_task_out.empty() && strategy != "tuning") throw Error("--tuned-task-out", "only with --strategy tuning");
    if (query.empty() || output.empty()) throw Error("iris-infer", "--query and --output are required");
    // A DICOM-SEG references one source series: the query must be one DICOM folder.
    if (!dicom_seg_path.empty()) {
      const auto plan = plan_queries(query, output);
      if (plan.size() != 1 || !fs::is_directory(plan[0].first))
        throw Error("--dicom-seg", "needs --query to be one DICOM series folder; " + query + " is not");
    }

    auto load_task = [&]() {
      model::TaskEmbedding t = model::TaskEmbedding::load(task_path);
      if (t.model_fingerprint != model.fingerprint)
        throw Error(task_path, "task embedding was made by another model (fingerprint " + t.model_fingerprint +
                                   ", this model " + model.fingerprint + "); encode it again with this model");
      return t;
    };

    model::TaskEmbedding task;  // the task for every query (not used by the retrieval strategies)
    infer::EmbeddingPool pool;  // retrieval strategies
    std::vector<double> tuning_losses;
    if (strategy == "memory-bank") {
      std::vector<long> ids;
      const auto names = split_names(classes_text);
      for (const auto& n : names) ids.push_back(model::class_id(model, n));
      at::Tensor id_tensor = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
      task.stages = model.net->memory_bank_tokens(id_tensor);
      for (auto& s : task.stages) s = s.to(at::kCPU);
      task.names = names;
      for (size_t i = 0; i < ids.size(); ++i) task.labels.push_back(static_cast<long>(i) + 1);
      task.model_fingerprint = model.fingerprint;
    } else if (strategy == "one-shot" || strategy == "ensemble") {
      task = task_path.empty() ? encode_from_references() : load_task();
    } else if (strategy == "tuning") {
      // Examples are the reference pairs; the start is --task or their ensemble.
      std::vector<infer::TuningExample> examples;
      std::vector<model::TaskEmbedding> encoded;
      for (size_t i = 0; i < references.size(); ++i) {
        ReferencePair pair = read_reference(i);
        io::check_same_grid(pair.image, pair.mask);
        if (task_path.empty()) encoded.push_back(encode_one(pair));
        std::vector<at::Tensor> masks;
        for (long v : labels) masks.push_back(pair.mask.voxels.eq(v).to(at::kFloat));
        examples.push_back({io::normalise_intensity(pair.image.voxels, preprocess), at::stack(masks)});
      }
      task = task_path.empty() ? model::TaskEmbedding::mean(encoded) : load_task();
      if (task.num_classes() != static_cast<long>(labels.size()))
        throw Error("--task", "the stored task has " + std::to_string(task.num_classes()) +
                                  " classes but the references give " + std::to_string(labels.size()));
      infer::TuningOptions tuning;
      tuning.steps = tune_steps;
      tuning.learning_rate = tune_lr;
      tuning.adamw = tune_adamw;
      tuning.device = device;
      tuning.classes_per_pass = classes_per_pass;
      if (app::show_progress())
        tuning.progress = [](long step, long total, double loss) {
          std::cerr << "\r  tuning step " << step << "/" << total << " loss " << loss << std::flush;
          if (step == total) std::cerr << "\n";
        };
      auto t = Clock::now();
      infer::TuningResult tuned = infer::tune_task_embedding(*model.net, task, examples, tuning);
      timings.add("tune", t);
      task = tuned.task;
      tuning_losses = tuned.losses;
      if (!tuned_task_out.empty()) task.save(tuned_task_out);
    } else {
      if (!pool_dir.empty()) pool = infer::EmbeddingPool::load(pool_dir, model.fingerprint);
      const size_t stored = pool.entries.size();
      if (!references.empty()) {
        infer::EmbeddingPool given = pool_from_references();
        for (auto& e : given.entries) pool.entries.push_back(std::move(e));
      }
      // Object retrieval starts from the first reference pair, else from a
      // random pool entry (seeded: runs repeat).
      if (!references.empty()) {
        task = pool.entries[stored].task;
      } else {
        std::mt19937 rng(seed);
        task = pool.entries[std::uniform_int_distribution<size_t>(0, pool.entries.size() - 1)(rng)].task;
        labels = task.labels;
        if (!requested.empty()) {
          std::vector<long> indices;
          for (long r : requested) {
            const auto it = std::find(task.labels.begin(), task.labels.end(), r);
            if (it == task.labels.end()) throw Error("--labels", "label value " + std::to_string(r) + " is not in the pool's initial entry");
            indices.push_back(static_cast<long>(it - task.labels.begin()));
          }
          task = task.select(indices);
          labels = requested;
        }
      }
    }

    infer::SlidingWindowOptions opts;
    opts.window = window > 0 ? window : model.config.max_patch_size;
    if (opts.window % 16 != 0 || opts.window > model.config.max_patch_size)
      throw Error("--window", "must be a multiple of 16 and at most the model's patch size " +
                                  std::to_string(model.config.max_patch_size));
    opts.overlap = overlap;
    opts.batch = window_batch;
    opts.device = device;
    opts.mirror_tta = tta;
    opts.classes_per_pass = classes_per_pass;
    if (app::show_progress())
      opts.progress = [](long done, long total) {
        std::cerr << "\r  windows " << done << "/" << total << std::flush;
        if (done == total) std::cerr << "\n";
      };
    infer::PostprocessOptions post;
    post.keep_largest = keep_largest;
    post.min_component_voxels = min_component_voxels;

    const std::string ref_modality =
        references.empty() ? upper(reference_modality) : input_modality(references[0], reference_modality, "");
    Json choices = Json::object();  // report: what retrieval picked per query
    for (const auto& [in, out] : plan_queries(query, output)) {
      if (!ref_modality.empty()) {
        const std::string q_modality = input_modality(in, query_modality, series);
        if (!q_modality.empty() && q_modality != ref_modality)
          warn(in + ": query modality " + q_modality + " differs from the reference modality " + ref_modality +
               " (in-context segmentation across modalities is unreliable)");
      }
      auto t = Clock::now();
      io::ImageReadOptions read_options;
      read_options.nan_as = nan_as;
      io::Image q = fs::is_directory(in) && !series.empty() ? io::read_dicom_series(in, series)
                                                             : io::read_image(in, read_options);
      for (const auto& w : q.warnings) warn(in + ": " + w);
      timings.add("read", t);
      t = Clock::now();
      std::optional<io::PreprocessedImage> q_pre;
      if (spatial) {
        auto [image, pre] = to_model_space(q);
        q_pre = pre;
        q.voxels = image.voxels;
      }
      at::Tensor volume = io::normalise_intensity(q.voxels, preprocess);
      timings.add("preprocess", t);

      model::TaskEmbedding query_task = task;
      if (strategy == "retrieval") {
        t = Clock::now();
        infer::RetrievalOptions ro;
        ro.window = opts;
        ro.window.progress = nullptr;
        ro.threshold = threshold;
        ro.similarity = similarity_name == "foreground-token" ? infer::EmbeddingSimilarity::foreground_token
                                                               : infer::EmbeddingSimilarity::all_tokens;
        infer::RetrievalResult picked = infer::object_level_retrieval(*model.net, volume, task, pool, ro);
        query_task = picked.task;
        timings.add("retrieval", t);
        choices[in] = Json::array();
        for (const long e : picked.chosen_entry) choices[in].push_back(e < 0 ? std::string("(initial)") : pool.entries[e].name);
      } else if (strategy == "image-retrieval") {
        t = Clock::now();
        const at::Tensor features = infer::image_feature_vector(*model.net, volume, opts.window, device);
        const long e = infer::nearest_image(features, pool);
        const auto& chosen = pool.entries[e].task;
        std::vector<long> indices;
        for (long l : task.labels) {
          const auto it = std::find(chosen.labels.begin(), chosen.labels.end(), l);
          if (it == chosen.labels.end())
            throw Error(pool.entries[e].name, "nearest pool entry lacks label value " + std::to_string(l));
          indices.push_back(static_cast<long>(it - chosen.labels.begin()));
        }
        query_task = chosen.select(indices);
        timings.add("retrieval", t);
        choices[in] = Json::array({pool.entries[e].name});
        app::Info() << "iris-infer: " << in << ": nearest reference " << pool.entries[e].name;
      }

      t = Clock::now();
      at::Tensor probs = infer::sliding_window_probabilities(*model.net, volume, query_task, opts);
      timings.add("network", t);
      t = Clock::now();
      at::Tensor lab = infer::labels_from_probabilities(probs, query_task.labels, threshold);
      lab = infer::postprocess_labels(lab, query_task.labels, post);
      timings.add("postprocess", t);
      t = Clock::now();
      if (q_pre) {
        // Back onto the query's own grid (DICOM included).
        lab = io::invert_to_source(lab, *q_pre, true).voxels;
        probs = io::invert_to_source(probs, *q_pre, false).voxels;
      }
      io::Image label_image;
      label_image.geometry = q.geometry;  // the query's grid, DICOM included
      long max_label = 0;
      for (long l : query_task.labels) max_label = std::max(max_label, l);
      label_image.voxels = max_label < 256 ? lab.to(at::kByte) : (max_label < 32768 ? lab.to(at::kShort) : lab);
      io::write_image(label_image, out);
      if (!dicom_seg_path.empty() && !label_image.voxels.ne(0).any().item<bool>()) {
        // A SEG needs at least one frame; an empty result is still a result.
        log::warn(in + ": nothing segmented, so no DICOM-SEG written to " + dicom_seg_path);
      } else if (!dicom_seg_path.empty()) {
        io::DicomSegOptions seg_options;
        for (size_t c = 0; c < query_task.labels.size() && c < query_task.names.size(); ++c)
          if (!query_task.names[c].empty()) seg_options.segment_names[query_task.labels[c]] = query_task.names[c];
        io::write_dicom_seg(dicom_seg_path, label_image, in, series, seg_options);
        app::Info() << "iris-infer: " << in << " -> " << dicom_seg_path << " (DICOM-SEG)";
      }
      if (!probabilities.empty()) {
        io::Image p;
        p.geometry = q.geometry;
        p.voxels = probs;
        io::write_image(p, probabilities);
      }
      timings.add("write", t);
      app::Info() << "iris-infer: " << in << " -> " << out;
    }

    if (!report_path.empty()) {
      Json report = {{"model", model_path},
                     {"model_fingerprint", model.fingerprint},
                     {"strategy", strategy},
                     {"device", device.str()},
                     {"classes", task.num_classes()},
                     {"classes_per_pass",
                      classes_per_pass > 0 ? std::min(classes_per_pass, task.num_classes()) : task.num_classes()},
                     {"peak_rss_bytes", app::peak_rss_bytes()},
                     {"warnings", warnings}};
      report["seconds"] = Json::object();
      for (const auto& [stage, seconds] : timings.stages) report["seconds"][stage] = number(seconds);
      if (!tuning_losses.empty()) {
        report["tuning_losses"] = Json::array();
        for (double l : tuning_losses) report["tuning_losses"].push_back(number(l));
      }
      if (!choices.empty()) report["retrieved"] = choices;
      write_text_file(report_path, dump(report, 2));
    }
    return 0;
  });
}
