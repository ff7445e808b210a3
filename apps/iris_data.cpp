// iris-data: datasets for training.
//   iris-data convert FORMAT SRC DST [--dataset-id N]
//                          a public dataset as downloaded -> nnU-Net v2 raw folder
//   iris-data verify DIR   check an nnU-Net v2 raw folder; one line per problem
//                          naming the file; exit 1 when there is any
//   iris-data download FORMAT
//                          where to get a dataset and how (prints; fetches nothing)
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/app_common.h"
#include "iris/common/error.h"
#include "iris/pipeline/dataset_check.h"
#include "iris/pipeline/dataset_convert.h"

#include <cstdio>
#include <filesystem>

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-data: datasets for training"};
  cli.require_subcommand(1);
  std::string folder;
  auto* verify = cli.add_subcommand("verify", "check an nnU-Net v2 raw dataset folder (dataset.json, imagesTr, labelsTr, "
                                              "imagesTs): pairs, channels, grids, label values, NaN/Inf, damaged files");
  verify->add_option("DIR", folder, "the dataset folder (e.g. nnUNet_raw/Dataset001_Liver)")->required();
  std::string format, source, destination, vocabulary;
  long dataset_id = -1;
  std::string formats_help;
  for (const auto& [name, what] : pipeline::dataset_formats()) formats_help += "\n  " + name + ": " + what;
  auto* convert = cli.add_subcommand("convert", "a public dataset as downloaded -> an nnU-Net v2 raw folder; formats:" +
                                                    formats_help);
  convert->add_option("FORMAT", format, "dataset format (listed above)")->required();
  convert->add_option("SRC", source, "the folder the dataset's own instructions leave (searched at any depth)")->required();
  convert->add_option("DST", destination, "the dataset folder to write (must not exist); with --dataset-id, the "
                      "nnUNet_raw folder to write DatasetNNN_Name into")->required();
  convert->add_option("--dataset-id", dataset_id, "nnU-Net dataset id: writes DST/DatasetNNN_<FORMAT>")
      ->check(CLI::Range(0L, 999L));
  convert->add_option("--class-vocabulary", vocabulary, "canonical class names (default: configs/classes.yaml)");
  auto* download = cli.add_subcommand("download", "print where and how to download a dataset (nothing is fetched)");
  download->add_option("FORMAT", format, "dataset format")->required();
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);

  if (convert->parsed())
    return app::run_main("iris-data", [&]() -> int {
      std::string target = destination;
      if (dataset_id >= 0) {
        char name[32];
        std::snprintf(name, sizeof name, "Dataset%03ld_", dataset_id);
        target = (std::filesystem::path(destination) / (name + format)).string();
      }
      pipeline::ConvertOptions options;
      options.class_vocabulary = vocabulary;
      options.note = [](const std::string& n) { app::Info() << "iris-data convert: " << n; };
      const auto s = pipeline::convert_dataset(format, source, target, options);
      std::string labels;
      for (size_t v = 1; v < s.labels.size(); ++v) labels += (labels.empty() ? "" : ", ") + std::to_string(v) + " " + s.labels[v];
      app::Info() << "iris-data convert: " << s.folder << ": " << s.training_cases << " training and " << s.test_cases
                  << " test cases; labels " << labels;
      return app::kOk;
    });
  if (download->parsed())
    return app::run_main("iris-data", [&]() -> int {
      std::cout << pipeline::download_instructions(format);
      return app::kOk;
    });

  return app::run_main("iris-data", [&]() -> int {
    const auto summary = pipeline::verify_raw_dataset(folder, [](long done, long total) {
      if (app::show_progress()) std::cerr << "\r  " << done << "/" << total << " cases" << (done == total ? "\n" : "") << std::flush;
    });
    for (const auto& p : summary.problems) std::cout << p.file << ": " << p.problem << "\n";
    app::Info() << "iris-data verify: " << folder << ": " << summary.training_cases << " training and "
                << summary.test_cases << " test cases, " << summary.channels << " channel(s), "
                << summary.problems.size() << " problem(s)";
    return summary.problems.empty() ? app::kOk : app::kFailure;
  });
}
