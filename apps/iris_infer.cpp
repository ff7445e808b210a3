// iris-infer: segment query volumes with an in-context task given by
// reference pairs, a stored task embedding, or memory-bank class names.
//   iris-infer --model M.iris --reference IMG --reference-mask LABELS --query IMG --output OUT
//   iris-infer encode --model M.iris --reference IMG --reference-mask LABELS --output T.task
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/types.h>

#include "common/app_common.h"
#include "iris/common/error.h"
#include "iris/data/intensity.h"
#include "iris/infer/reference.h"
#include "iris/infer/sliding_window.h"
#include "iris/io/dicom.h"
#include "iris/io/image_io.h"
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

long long peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"iris-infer: in-context segmentation of 3-D medical images"};
  cli.require_subcommand(0, 1);
  std::string model_path, query, output, probabilities, task_path, labels_text, classes_text, series;
  std::string preprocess = "none", device_name = "cpu", report_path;
  std::vector<std::string> references, reference_masks;
  double overlap = 0.5, threshold = 0.5;
  long window = 0, window_batch = 1;
  int threads = 0;
  bool tta = false, quiet = false;

  auto add_reference_options = [&](CLI::App* app) {
    app->add_option("--model", model_path, "iris model file (.iris)")->required();
    app->add_option("--reference", references, "reference image (repeat for a context ensemble)");
    app->add_option("--reference-mask", reference_masks, "reference label map, one per --reference");
    app->add_option("--labels", labels_text, "label values to segment, e.g. 1,3 (default: all in the reference)");
    app->add_option("--preprocess", preprocess, "intensity scheme: none, zscore, mr, ct, ct-brain, ct-abdomen");
    app->add_option("--device", device_name, "cpu or cuda:N");
    app->add_option("--threads", threads, "CPU threads (default: all cores)");
  };
  add_reference_options(&cli);
  cli.add_option("--task", task_path, "stored task embedding (from iris-infer encode)");
  cli.add_option("--classes", classes_text, "memory-bank class names, e.g. brain,ventricles");
  cli.add_option("--query", query, "image file, DICOM folder, folder of images or .txt list");
  cli.add_option("--series", series, "DICOM SeriesInstanceUID when the folder holds several series");
  cli.add_option("--output", output, "label map (file, or folder for several queries)");
  cli.add_option("--probabilities", probabilities, "per-class sigmoid maps as a 4-D float32 image");
  cli.add_option("--overlap", overlap, "sliding-window overlap")->check(CLI::Range(0.0, 0.95));
  cli.add_option("--window", window, "sliding-window edge (default: the model's patch size)");
  cli.add_option("--window-batch", window_batch, "windows per network call");
  cli.add_option("--threshold", threshold, "probability a class needs to claim a voxel");
  cli.add_flag("--tta", tta, "mirroring test-time augmentation (8 flips)");
  cli.add_option("--report", report_path, "write a JSON run report (timings, memory)");
  cli.add_flag("--quiet", quiet, "no progress output");

  CLI::App* encode = cli.add_subcommand("encode", "encode reference pairs into a stored task embedding");
  std::string encode_output;
  add_reference_options(encode);
  encode->add_option("--output", encode_output, "task embedding file to write")->required();

  CLI11_PARSE(cli, argc, argv);

  return app::run_main("iris-infer", [&]() -> int {
    app::configure_threads(threads);
    Timings timings;
    auto t0 = Clock::now();
    model::IrisModel model = model::load_model(model_path);
    const c10::Device device(device_name);
    model.net->to(device);
    model.net->eval();
    timings.add("load_model", t0);

    auto encode_from_references = [&]() {
      if (references.size() != reference_masks.size())
        throw Error("--reference-mask", "give one --reference-mask per --reference (" + std::to_string(references.size()) +
                                            " images, " + std::to_string(reference_masks.size()) + " masks)");
      const std::vector<long> requested = parse_label_list(labels_text);
      std::vector<model::TaskEmbedding> tasks;
      std::vector<long> labels;
      for (size_t i = 0; i < references.size(); ++i) {
        auto t = Clock::now();
        io::Image image = io::read_image(references[i]);
        io::Image mask = io::read_labels(reference_masks[i]);
        timings.add("read", t);
        t = Clock::now();
        const auto values = infer::reference_label_values(mask, labels.empty() ? requested : labels);
        if (labels.empty()) labels = values;
        tasks.push_back(infer::encode_reference(*model.net, image, mask, labels, preprocess, device, model.fingerprint));
        timings.add("encode", t);
      }
      return model::TaskEmbedding::mean(tasks);
    };

    if (encode->parsed()) {
      if (references.empty()) throw Error("--reference", "encode needs at least one reference pair");
      model::TaskEmbedding task = encode_from_references();
      task.save(encode_output);
      if (!quiet) std::cerr << "iris-infer: wrote " << task.num_classes() << "-class task embedding to " << encode_output << "\n";
      return 0;
    }

    const int sources = (!references.empty()) + (!task_path.empty()) + (!classes_text.empty());
    if (sources != 1)
      throw Error("iris-infer", "give exactly one task source: --reference/--reference-mask, --task or --classes");
    if (query.empty() || output.empty()) throw Error("iris-infer", "--query and --output are required");

    model::TaskEmbedding task;
    if (!references.empty()) {
      task = encode_from_references();
    } else if (!task_path.empty()) {
      task = model::TaskEmbedding::load(task_path);
      if (task.model_fingerprint != model.fingerprint)
        throw Error(task_path, "task embedding was made by another model (fingerprint " + task.model_fingerprint +
                                   ", this model " + model.fingerprint + "); encode it again with this model");
    } else {
      std::vector<long> ids;
      const auto names = split_names(classes_text);
      for (const auto& n : names) ids.push_back(model::class_id(model, n));
      at::Tensor id_tensor = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
      task.stages = model.net->memory_bank_tokens(id_tensor);
      for (auto& s : task.stages) s = s.to(at::kCPU);
      task.names = names;
      for (size_t i = 0; i < ids.size(); ++i) task.labels.push_back(static_cast<long>(i) + 1);
      task.model_fingerprint = model.fingerprint;
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
    if (!quiet)
      opts.progress = [](long done, long total) {
        std::cerr << "\r  windows " << done << "/" << total << std::flush;
        if (done == total) std::cerr << "\n";
      };

    for (const auto& [in, out] : plan_queries(query, output)) {
      auto t = Clock::now();
      io::Image q = fs::is_directory(in) && !series.empty() ? io::read_dicom_series(in, series) : io::read_image(in);
      for (const auto& w : q.warnings) app::log_warn(in + ": " + w);
      timings.add("read", t);
      t = Clock::now();
      at::Tensor volume = data::normalise_intensity(q.voxels, preprocess);
      timings.add("preprocess", t);
      t = Clock::now();
      at::Tensor probs = infer::sliding_window_probabilities(*model.net, volume, task, opts);
      timings.add("network", t);
      t = Clock::now();
      io::Image labels;
      labels.geometry = q.geometry;
      at::Tensor lab = infer::labels_from_probabilities(probs, task.labels, threshold);
      long max_label = 0;
      for (long l : task.labels) max_label = std::max(max_label, l);
      labels.voxels = max_label < 256 ? lab.to(at::kByte) : (max_label < 32768 ? lab.to(at::kShort) : lab);
      io::write_image(labels, out);
      if (!probabilities.empty()) {
        io::Image p;
        p.geometry = q.geometry;
        p.voxels = probs;
        io::write_image(p, probabilities);
      }
      timings.add("write", t);
      if (!quiet) std::cerr << "iris-infer: " << in << " -> " << out << "\n";
    }

    if (!report_path.empty()) {
      std::ostringstream js;
      js << "{\n  \"model\": \"" << model_path << "\",\n  \"model_fingerprint\": \"" << model.fingerprint
         << "\",\n  \"device\": \"" << device.str() << "\",\n  \"classes\": " << task.num_classes()
         << ",\n  \"seconds\": {";
      for (size_t i = 0; i < timings.stages.size(); ++i)
        js << (i ? ", " : "") << "\"" << timings.stages[i].first << "\": " << timings.stages[i].second;
      js << "},\n  \"peak_rss_bytes\": " << peak_rss_bytes() << "\n}\n";
      std::ofstream(report_path) << js.str();
    }
    return 0;
  });
}
