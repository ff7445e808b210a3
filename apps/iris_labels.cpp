// iris-labels: small label-map utilities for preparing references and
// baselines without leaving iris:
//   threshold  IMG > value            -> binary label map
//   map        relabel value ranges   ("91-116:2,77-78:3"; others -> 0)
//   resample   onto another image's grid through world coordinates (nearest)
//   otsu       Otsu threshold of an image (a baseline that needs no learning)
//   drop       set some label values to 0, keep the others
//   fill       replace voxels of one value by what surrounds them in their slice
//              (e.g. text burnt into a test image)
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <ATen/ATen.h>

#include "common/app_common.h"
#include "iris/common/error.h"
#include "iris/io/image_io.h"
#include "iris/io/resample.h"

using namespace iris;

namespace {

io::Image as_labels(const io::Image& like, const at::Tensor& voxels) {
  io::Image out;
  out.geometry = like.geometry;
  // The smallest type that holds every value (labels are >= 0).
  const long highest = voxels.numel() ? voxels.max().item<long>() : 0;
  out.voxels = voxels.to(highest < 256 ? at::kByte : highest < 32768 ? at::kShort : at::kInt);
  return out;
}

// Otsu's threshold on a 256-bin histogram of the non-constant range.
double otsu_threshold(const at::Tensor& volume) {
  at::Tensor v = volume.to(at::kDouble).reshape({-1});
  const double lo = v.min().item<double>(), hi = v.max().item<double>();
  if (hi <= lo) throw Error("otsu", "the image is constant");
  at::Tensor hist = at::histc(v, 256, lo, hi);
  at::Tensor p = hist / hist.sum();
  at::Tensor centres = lo + (at::arange(256, at::kDouble) + 0.5) * (hi - lo) / 256;
  at::Tensor w0 = p.cumsum(0), mu0 = (p * centres).cumsum(0);
  const double mu = mu0[-1].item<double>();
  at::Tensor between = (mu * w0 - mu0).pow(2) / (w0 * (1 - w0)).clamp_min(1e-12);
  const long best = between.argmax().item<long>();
  return centres[best].item<double>() + 0.5 * (hi - lo) / 256;
}

// "LO-HI,V" -> ranges of whole numbers >= 0; anything else names `flag`.
std::vector<std::pair<long, long>> parse_ranges(const std::string& text, const std::string& flag) {
  std::vector<std::pair<long, long>> out;
  std::stringstream ss(text);
  std::string item;
  auto whole = [&](const std::string& t) {
    if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos || t.size() > 9)
      throw Error(flag, "'" + t + "' in '" + text + "' is not a label value (a whole number >= 0)");
    return std::stol(t);
  };
  while (std::getline(ss, item, ',')) {
    const auto dash = item.find('-', 1);
    const long lo = whole(item.substr(0, dash)), hi = dash == std::string::npos ? lo : whole(item.substr(dash + 1));
    if (hi < lo) throw Error(flag, "range " + item + " is empty (write LO-HI with LO <= HI)");
    out.emplace_back(lo, hi);
  }
  if (out.empty()) throw Error(flag, "no values given");
  return out;
}

// Each masked voxel becomes the mean of its unmasked in-plane neighbours,
// layer by layer from the edge of the masked area inwards.
at::Tensor inpaint_in_slices(at::Tensor voxels, at::Tensor mask) {
  voxels = voxels.to(at::kFloat).clone();
  mask = mask.clone();
  for (int pass = 0; pass < 1000 && mask.any().item<bool>(); ++pass) {
    const at::Tensor known = (~mask).to(at::kFloat).unsqueeze(1);               // [Z, 1, Y, X]
    const at::Tensor values = (voxels * (~mask).to(at::kFloat)).unsqueeze(1);
    const at::Tensor kernel = at::ones({1, 1, 3, 3});
    const at::Tensor sum = at::conv2d(values, kernel, {}, 1, 1).squeeze(1);
    const at::Tensor count = at::conv2d(known, kernel, {}, 1, 1).squeeze(1);
    const at::Tensor ready = mask & (count > 0);
    if (!ready.any().item<bool>()) break;
    voxels = at::where(ready, sum / count.clamp_min(1), voxels);
    mask = mask & ~ready;
  }
  return voxels;
}

}  // namespace

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
      io::write_image(as_labels(img, img.voxels.gt(value).to(at::kInt)), output);
    } else if (map->parsed()) {
      io::Image lab = io::read_labels(input);
      at::Tensor out = at::zeros_like(lab.voxels);
      std::stringstream ss(mapping);
      std::string item;
      while (std::getline(ss, item, ',')) {
        const auto colon = item.find(':');
        if (colon == std::string::npos) throw Error("--map", "expected LO-HI:NEW or V:NEW, got '" + item + "'");
        const std::string range = item.substr(0, colon);
        const auto dash = range.find('-', 1);
        // Whole numbers >= 0, nothing else: "5x" or "-1" are mistakes, not 5 and -1.
        auto whole = [&](const std::string& text) {
          if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 9)
            throw Error("--map", "'" + text + "' in '" + item + "' is not a label value (a whole number >= 0)");
          return std::stol(text);
        };
        const long lo = whole(range.substr(0, dash));
        const long hi = dash == std::string::npos ? lo : whole(range.substr(dash + 1));
        const long target = whole(item.substr(colon + 1));
        if (hi < lo)
          throw Error("--map", "range " + range + " in '" + item + "' is empty (write LO-HI with LO <= HI)");
        out.masked_fill_(lab.voxels.ge(lo) & lab.voxels.le(hi), target);
      }
      io::write_image(as_labels(lab, out), output);
    } else if (resample->parsed()) {
      io::ImageReadOptions read_options;
      read_options.prefer_sform = prefer_sform;
      io::Image lab = io::read_labels(input, read_options);
      io::Image target = io::read_image(like);
      at::Tensor out = io::resample_voxels(lab.voxels, lab.geometry, target.geometry, io::Interpolation::kNearest);
      io::write_image(as_labels(target, out.to(at::kInt)), output);
    } else if (drop->parsed()) {
      io::Image lab = io::read_labels(input);
      for (const auto& [lo, hi] : parse_ranges(values, "--values")) lab.voxels.masked_fill_(lab.voxels.ge(lo) & lab.voxels.le(hi), 0);
      io::write_image(as_labels(lab, lab.voxels), output);
    } else if (fill->parsed()) {
      io::Image img = io::read_image(input);
      img.voxels = inpaint_in_slices(img.voxels, img.voxels.eq(fill_value));
      io::write_image(img, output);
    } else if (otsu->parsed()) {
      io::Image img = io::read_image(input);
      const double t = otsu_threshold(img.voxels);
      app::Info() << "iris-labels: Otsu threshold " << t;
      io::write_image(as_labels(img, img.voxels.gt(t).to(at::kInt)), output);
    }
    return 0;
  });
}
