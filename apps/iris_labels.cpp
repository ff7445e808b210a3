// iris-labels: small label-map utilities for preparing references and
// baselines without leaving iris:
//   threshold  IMG > value            -> binary label map
//   map        relabel value ranges   ("91-116:2,77-78:3"; others -> 0)
//   resample   onto another image's grid through world coordinates (nearest)
//   otsu       Otsu threshold of an image (a baseline that needs no learning)
//   drop       set some label values to 0, keep the others
//   fill       replace voxels of one value by what surrounds them in their slice
//              (e.g. text burnt into a test image)
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>

#include "common/app_common.h"
#include "iris/common/label_list.h"
#include "iris/io/image_io.h"
#include "iris/io/label_ops.h"
#include "iris/io/resample.h"

using namespace iris;

int main(int argc, char** argv) {
  CLI::App cli{"iris-labels: label-map utilities"};
  cli.require_subcommand(1);
  std::string input, output, like, mapping;
  double value = 0;
  auto* threshold = cli.add_subcommand("threshold", "voxels above --above become 1");
  threshold->add_option("--input", input)->required();
  threshold->add_option("--above", value)->required()->check(app::finite_number());
  threshold->add_option("--output", output)->required();
  auto* map = cli.add_subcommand("map", "relabel: --map 'LO-HI:NEW,V:NEW'; unlisted values become 0");
  map->add_option("--input", input)->required();
  map->add_option("--map", mapping)->required();
  map->add_option("--output", output)->required();
  bool prefer_sform = false;
  auto* resample = cli.add_subcommand("resample", "nearest-neighbour resampling onto --like's grid");
  resample->add_option("--input", input)->required();
  resample->add_flag("--prefer-sform", prefer_sform,
                     "read --input's NIfTI sform whenever its code is set (FSL's rule; ITK's is the default)");
  resample->add_option("--like", like)->required();
  resample->add_option("--output", output)->required();
  auto* otsu = cli.add_subcommand("otsu", "Otsu threshold of an image -> binary label map");
  otsu->add_option("--input", input)->required();
  otsu->add_option("--output", output)->required();
  std::string values;
  auto* drop = cli.add_subcommand("drop", "set the listed label values to 0: --values '37-42,73'");
  drop->add_option("--input", input)->required();
  drop->add_option("--values", values)->required();
  drop->add_option("--output", output)->required();
  double fill_value = 0;
  auto* fill = cli.add_subcommand("fill", "replace voxels equal to --value by the mean of their neighbours in the slice, "
                                          "repeated inwards (inpainting)");
  fill->add_option("--input", input)->required();
  fill->add_option("--value", fill_value)->required()->check(app::finite_number());
  fill->add_option("--output", output)->required();
  app::add_verbosity(cli);
  IRIS_PARSE(cli, argc, argv);

  return app::run_main("iris-labels", [&]() -> int {
    if (threshold->parsed()) {
      io::Image img = io::read_image(input);
      io::write_image(io::label_image_like(img, img.voxels.gt(value).to(at::kInt)), output);
    } else if (map->parsed()) {
      io::Image lab = io::read_labels(input);
      const auto mappings = parse_label_mapping(mapping, "--map");
      io::write_image(io::label_image_like(lab, io::apply_label_mapping(lab.voxels, mappings)), output);
    } else if (resample->parsed()) {
      io::ImageReadOptions read_options;
      read_options.prefer_sform = prefer_sform;
      io::Image lab = io::read_labels(input, read_options);
      io::Image target = io::read_image(like);
      at::Tensor out = io::resample_voxels(lab.voxels, lab.geometry, target.geometry, io::Interpolation::kNearest);
      io::write_image(io::label_image_like(target, out.to(at::kInt)), output);
    } else if (drop->parsed()) {
      io::Image lab = io::read_labels(input);
      std::vector<LabelMapping> to_zero;
      for (long v : parse_label_values(values, "--values")) to_zero.push_back({v, v, 0});
      io::write_image(io::label_image_like(lab, io::apply_label_mapping(lab.voxels, to_zero, -1)), output);
    } else if (fill->parsed()) {
      io::Image img = io::read_image(input);
      img.voxels = io::inpaint_in_slices(img.voxels, img.voxels.eq(fill_value));
      io::write_image(img, output);
    } else if (otsu->parsed()) {
      io::Image img = io::read_image(input);
      const double t = io::otsu_threshold(img.voxels, "iris-labels otsu: " + input);
      app::Info() << "iris-labels: Otsu threshold " << t;
      io::write_image(io::label_image_like(img, img.voxels.gt(t).to(at::kInt)), output);
    }
    return 0;
  });
}
