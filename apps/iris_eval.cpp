// iris-eval: segmentation metrics of a prediction folder against a reference
// folder (nnU-Net summary.json + CSV + console table + HTML report), the RSNA
// 2025 aneurysm metric ("iris-eval rsna") and a synthetic speed benchmark
// ("iris-eval bench").
#include <chrono>
#include <cstdio>
#include <iostream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/eval/evaluation.h"
#include "iris/eval/report.h"
#include "iris/eval/rsna.h"

namespace {

void write_text(const std::string& path, const std::string& text) { iris::write_text_file(path, text); }

// A reference with `labels` axis-aligned ellipsoid-ish slabs spread over the
// volume and a prediction that is the reference shifted by a few voxels: the
// same work as a real multi-organ pair.
double run_benchmark(int64_t nx, int64_t ny, int64_t nz, int labels) {
  at::Tensor reference = at::zeros({nz, ny, nx}, at::kInt);
  const int per_row = 4;
  for (int l = 0; l < labels; ++l) {
    const int64_t cx = nx * (1 + l % per_row) / (per_row + 1);
    const int64_t cy = ny * (1 + (l / per_row) % per_row) / (per_row + 1);
    const int64_t cz = nz / 2;
    const int64_t r = std::min(nx, ny) / (2 * per_row + 2);
    const int64_t hz = nz / 3;
    // Only the box around the ellipsoid is touched (keeps the setup quick).
    at::Tensor box = reference.narrow(0, cz - hz, 2 * hz).narrow(1, cy - r, 2 * r).narrow(2, cx - r, 2 * r);
    at::Tensor zz = at::arange(-hz, hz).view({2 * hz, 1, 1});
    at::Tensor yy = at::arange(-r, r).view({1, 2 * r, 1});
    at::Tensor xx = at::arange(-r, r).view({1, 1, 2 * r});
    at::Tensor inside = (zz * zz) / double(hz * hz) + (yy * yy + xx * xx) / double(r * r) <= 1.0;
    box.masked_fill_(inside, l + 1);
  }
  at::Tensor prediction = at::roll(reference, {2, -3, 1}, {0, 1, 2});
  const auto start = std::chrono::steady_clock::now();
  const auto metrics = iris::eval::compute_label_metrics(reference, prediction, {0.8, 0.8, 1.5});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double dice_sum = 0;
  for (const auto& m : metrics) dice_sum += m.dice;
  std::cout << nx << "x" << ny << "x" << nz << ", " << metrics.size() << " labels, "
            << at::get_num_threads() << " threads: " << seconds << " s (mean Dice "
            << dice_sum / metrics.size() << ")\n";
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  return iris::app::run_main("iris-eval", [&]() -> int {
    CLI::App app{"Segmentation metrics (nnU-Net summary.json, CSV, console table, HTML report); RSNA 2025 AUC"};
    std::string reference, prediction, output, csv_path, labels_text, label_names_path, html_dir,
        image;
    double tolerance_mm = 2.0;
    int threads = 0;
    app.add_option("--reference", reference, "Reference label map, or folder of them");
    app.add_option("--prediction", prediction, "Predicted label map, or folder (matched by case name)");
    app.add_option("--output", output, "summary.json to write (nnU-Net v2 schema + extra metrics); without it, the console table alone");
    app.add_option("--csv", csv_path, "CSV with one row per case x label");
    app.add_option("--html", html_dir, "Folder for an HTML report (index.html + PNG slices)");
    app.add_option("--image", image, "Image under the report's outlines (with --html): file, or folder matched by case "
                   "name");
    app.add_option("--labels", labels_text, "Labels to evaluate, e.g. 1,2,3 (default: all found)");
    iris::app::name_settings({{"html", "--html"}, {"image", "--image"}, {"labels", "--labels"}});
    app.add_option("--label-names", label_names_path, "File of '<value> <name>' lines (instead of --labels)");
    app.add_option("--tolerance-mm", tolerance_mm, "Tolerance of the normalised surface Dice (mm)")
        ->check(iris::app::number_in(0, 1e6));
    iris::app::add_threads_option(app, threads);

    auto* bench = app.add_subcommand("bench", "Time the metrics of a synthetic label pair");
    int64_t bx = 512, by = 512, bz = 300;
    int blabels = 15;
    bench->add_option("--size-x", bx)->check(CLI::Range(int64_t{1}, int64_t{4096}));
    bench->add_option("--size-y", by)->check(CLI::Range(int64_t{1}, int64_t{4096}));
    bench->add_option("--size-z", bz)->check(CLI::Range(int64_t{1}, int64_t{4096}));
    bench->add_option("--labels", blabels)->check(CLI::Range(1, 1000));
    auto* rsna = app.add_subcommand("rsna", "RSNA 2025 aneurysm metric: weighted mean of per-column ROC AUC");
    std::string rsna_predictions, rsna_truth, rsna_output;
    rsna->add_option("--predictions", rsna_predictions, "CSV: SeriesInstanceUID + 14 label columns")->required();
    rsna->add_option("--truth", rsna_truth, "CSV: SeriesInstanceUID + 14 label columns (0/1)")->required();
    rsna->add_option("--output", rsna_output, "JSON file to write");
    app.require_subcommand(0, 1);
    iris::app::add_verbosity(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e) == 0 ? 0 : iris::app::kUsage;
    }
    if (!image.empty() && html_dir.empty())
      throw iris::Error("--image", "goes under the outlines of the HTML report: it needs --html");
    if (!label_names_path.empty() && !labels_text.empty())
      throw iris::Error("--label-names", "names the labels to evaluate: give it or --labels, not both");
    iris::app::configure_threads(threads);
    if (bench->parsed()) {
      run_benchmark(bx, by, bz, blabels);
      return iris::app::kOk;
    }
    if (rsna->parsed()) {
      const auto score = iris::eval::score_rsna(iris::eval::read_csv(rsna_predictions),
                                                iris::eval::read_csv(rsna_truth));
      for (const auto& warning : score.warnings) iris::log::warn(warning);
      if (!rsna_output.empty()) write_text(rsna_output, iris::eval::rsna_json(score));
      std::cout << iris::eval::rsna_console_table(score);
      return iris::app::kOk;
    }
    if (reference.empty() || prediction.empty()) {
      std::cerr << "iris-eval: --reference and --prediction are required\n"
                << app.help();
      return iris::app::kUsage;
    }
    iris::eval::EvaluationOptions options;
    options.tolerance_mm = tolerance_mm;
    if (!labels_text.empty()) options.labels = iris::eval::parse_label_list(labels_text);
    if (!label_names_path.empty()) {
      options.label_names = iris::eval::read_label_names(label_names_path);
      for (const auto& entry : options.label_names) options.labels.push_back(entry.first);
    }
    const auto pairs = iris::eval::match_cases(reference, prediction);
    // Checked before the (long) evaluation so a missing image fails fast.
    iris::eval::match_images(image, pairs);
    iris::log::info("evaluating " + std::to_string(pairs.size()) + " case(s)");
    const auto summary = iris::eval::evaluate(pairs, options);
    // The report comes first: when it fails, no summary.json claims success.
    if (!html_dir.empty()) iris::eval::write_html_report(summary, html_dir, {image});
    if (!output.empty()) write_text(output, iris::eval::summary_json(summary));
    if (!csv_path.empty()) write_text(csv_path, iris::eval::metrics_csv(summary));
    std::cout << iris::eval::console_table(summary);
    return iris::app::kOk;
  });
}
