#include "iris/io/preprocess.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/io/intensity.h"

namespace iris::io {

// ------------------------------------------------------------ config

namespace {

std::string format_number(double value) {
  std::ostringstream s;
  s.precision(15);  // enough for any spacing a user types, without 0.1000000001 noise
  s << value;
  return s.str();
}

std::vector<double> parse_number_list(const ConfigMap& m, const std::string& key) {
  std::string text = m.get(key);
  for (char& c : text)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::istringstream in(text);
  std::vector<double> values;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || !std::isfinite(v))
      throw_bad_value(m, key, "'" + m.get(key) + "' is not a number or list of numbers");
    values.push_back(v);
  }
  return values;
}

bool is_none(const ConfigMap& m, const std::string& key) {
  std::string v = m.get(key);
  std::transform(v.begin(), v.end(), v.begin(), ::tolower);
  return v == "none" || v == "null" || v == "~" || v.empty();
}

}  // namespace

void PreprocessConfig::validate() const {
  if (spacing)
    for (double s : *spacing)
      if (!(s > 0)) throw Error("preprocess.spacing", "must be positive (or none)");
  if (fast_spacing)
    for (int a = 0; a < 3; ++a) {
      if (!((*fast_spacing)[a] > 0)) throw Error("preprocess.fast_spacing", "must be positive (or none)");
      if (spacing && (*fast_spacing)[a] < (*spacing)[a])
        throw Error("preprocess.fast_spacing", "must be at least as coarse as preprocess.spacing on every axis (" +
                                                   format_number((*fast_spacing)[a]) + " < " +
                                                   format_number((*spacing)[a]) + ")");
    }
  if (image_interpolation != Interpolation::kLinear && image_interpolation != Interpolation::kBSpline)
    throw Error("preprocess.interpolation", "images need linear or bspline, not " +
                                                interpolation_name(image_interpolation));
  if (label_interpolation != Interpolation::kNearest && label_interpolation != Interpolation::kPerLabelLinear)
    throw Error("preprocess.label_interpolation", "labels need nearest or per-label-linear, not " +
                                                      interpolation_name(label_interpolation));
  const auto schemes = io::intensity_schemes();
  if (std::find(schemes.begin(), schemes.end(), intensity) == schemes.end()) {
    std::string known;
    for (const auto& s : schemes) known += (known.empty() ? "" : ", ") + s;
    const std::string near = nearest_word(intensity, schemes);
    throw Error("preprocess.intensity", "unknown scheme '" + intensity + "'" +
                                            (near.empty() ? "" : " (did you mean '" + near + "'?)") +
                                            "; known: " + known);
  }
  if (!(crop.percentile >= 0 && crop.percentile <= 100))
    throw Error("preprocess.crop_percentile", "must be within 0..100");
  if (!(crop.margin_mm >= 0)) throw Error("preprocess.crop_margin_mm", "must be non-negative");
  if (n4_options.shrink_factor < 1) throw Error("preprocess.n4_shrink", "must be at least 1");
  for (int it : n4_options.iterations)
    if (it < 1) throw Error("preprocess.n4_iterations", "each level needs at least one iteration");
}

namespace {

std::string bool_text(bool b) { return b ? "true" : "false"; }

std::string spacing_text(const std::optional<std::array<double, 3>>& s) {
  return s ? "[" + format_number((*s)[0]) + ", " + format_number((*s)[1]) + ", " + format_number((*s)[2]) + "]"
           : "none";
}

void read_spacing(const ConfigMap& m, const std::string& key, std::optional<std::array<double, 3>>& out) {
  if (is_none(m, key)) {
    out.reset();
    return;
  }
  const auto v = parse_number_list(m, key);
  if (v.size() == 1) out = std::array<double, 3>{v[0], v[0], v[0]};
  else if (v.size() == 3) out = std::array<double, 3>{v[0], v[1], v[2]};
  else throw Error("preprocess." + key, "needs one number (isotropic), three (x, y, z) or none");
}

// Each preprocess.* key once: its name, how it is read and how it is written.
struct Key {
  const char* name;
  std::function<void(const ConfigMap&, const std::string&, PreprocessConfig&)> read;
  std::function<std::string(const PreprocessConfig&)> write;
};

const std::vector<Key>& keys() {
  using C = PreprocessConfig;
  using M = ConfigMap;
  using S = std::string;
  static const std::vector<Key> table{
      {"reorient", [](const M& m, const S& k, C& c) { c.reorient = config_bool(m, k); },
       [](const C& c) { return bool_text(c.reorient); }},
      {"spacing", [](const M& m, const S& k, C& c) { read_spacing(m, k, c.spacing); },
       [](const C& c) { return spacing_text(c.spacing); }},
      {"fast_spacing", [](const M& m, const S& k, C& c) { read_spacing(m, k, c.fast_spacing); },
       [](const C& c) { return spacing_text(c.fast_spacing); }},
      {"interpolation",
       [](const M& m, const S& k, C& c) {
         c.image_interpolation = parse_interpolation(config_string(m, k), "preprocess." + k);
       },
       [](const C& c) { return interpolation_name(c.image_interpolation); }},
      {"label_interpolation",
       [](const M& m, const S& k, C& c) {
         c.label_interpolation = parse_interpolation(config_string(m, k), "preprocess." + k);
       },
       [](const C& c) { return interpolation_name(c.label_interpolation); }},
      {"intensity", [](const M& m, const S& k, C& c) { c.intensity = config_string(m, k); },
       [](const C& c) { return c.intensity; }},
      {"crop_foreground", [](const M& m, const S& k, C& c) { c.crop_foreground = config_bool(m, k); },
       [](const C& c) { return bool_text(c.crop_foreground); }},
      {"crop_percentile", [](const M& m, const S& k, C& c) { c.crop.percentile = config_double(m, k); },
       [](const C& c) { return format_number(c.crop.percentile); }},
      {"crop_threshold",
       [](const M& m, const S& k, C& c) {
         c.crop.use_threshold = !is_none(m, k);
         if (c.crop.use_threshold) c.crop.threshold = config_double(m, k);
       },
       [](const C& c) { return c.crop.use_threshold ? format_number(c.crop.threshold) : S("none"); }},
      {"crop_margin_mm", [](const M& m, const S& k, C& c) { c.crop.margin_mm = config_double(m, k); },
       [](const C& c) { return format_number(c.crop.margin_mm); }},
      {"n4", [](const M& m, const S& k, C& c) { c.n4 = config_bool(m, k); },
       [](const C& c) { return bool_text(c.n4); }},
      {"n4_shrink",
       [](const M& m, const S& k, C& c) { c.n4_options.shrink_factor = static_cast<int>(config_int(m, k)); },
       [](const C& c) { return std::to_string(c.n4_options.shrink_factor); }},
      {"n4_iterations",
       [](const M& m, const S& k, C& c) {
         const auto v = config_int_list(m, k);
         if (v.size() != 3) throw Error("preprocess." + k, "needs three counts (one per fitting level)");
         for (int i = 0; i < 3; ++i) c.n4_options.iterations[i] = static_cast<int>(v[i]);
       },
       [](const C& c) {
         const auto& it = c.n4_options.iterations;
         return format_int_list({it[0], it[1], it[2]});
       }},
  };
  return table;
}

}  // namespace

std::vector<std::string> PreprocessConfig::known_keys() {
  std::vector<std::string> names;
  for (const auto& k : keys()) names.push_back(k.name);
  return names;
}

PreprocessConfig PreprocessConfig::from_config(const ConfigMap& m) {
  reject_unknown_keys(m, known_keys(), "preprocess");
  PreprocessConfig c;
  for (const auto& k : keys())
    if (m.has(k.name)) k.read(m, k.name, c);
  c.validate();
  return c;
}

ConfigMap PreprocessConfig::to_config() const {
  ConfigMap m;
  for (const auto& k : keys()) m.set(k.name, k.write(*this));
  return m;
}

// ------------------------------------------------------------ pipeline

namespace {

// The spatial steps shared by images and labels, up to (not including)
// resampling: fills the inverse bookkeeping of `out`.
at::Tensor reorient_and_crop(const at::Tensor& voxels, PreprocessedImage& out, bool find_crop) {
  at::Tensor v = reorient_voxels(voxels, out.reorientation);
  if (find_crop) out.crop = foreground_box(v, out.reoriented_geometry, out.config.crop);
  out.cropped_geometry = cropped_geometry(out.reoriented_geometry, out.crop);
  return out.crop.covers_whole(out.reoriented_geometry) ? v : crop_voxels(v, out.crop);
}

void check_voxels_match(const Image& image, const char* what) {
  const auto& v = image.voxels;
  const auto& g = image.geometry;
  if (!v.defined() || v.dim() != 3 || v.size(2) != g.size[0] || v.size(1) != g.size[1] || v.size(0) != g.size[2])
    throw Error(image.source.empty() ? what : image.source,
                "needs a [Z,Y,X] tensor matching its geometry (" + g.describe() + ")");
}

}  // namespace

PreprocessedImage preprocess(const Image& image, const PreprocessConfig& config) {
  config.validate();
  check_voxels_match(image, "preprocess");
  PreprocessedImage out;
  out.config = config;
  out.source = image.source;
  out.source_geometry = image.geometry;
  out.reorientation = config.reorient ? canonical_reorientation(image.geometry) : Reorientation{};
  out.reoriented_geometry = reoriented_geometry(image.geometry, out.reorientation);
  out.crop.end = out.reoriented_geometry.size;  // whole image unless cropping finds less

  at::Tensor v = reorient_and_crop(image.voxels.to(at::kFloat), out, config.crop_foreground);
  if (config.n4) v = n4_bias_correct(v, out.cropped_geometry, config.n4_options);
  out.geometry = out.cropped_geometry;
  if (config.spacing) {
    const Geometry target = grid_with_spacing(out.cropped_geometry, *config.spacing);
    if (!target.same_grid(out.cropped_geometry, 1e-9)) {
      v = resample_voxels(v, out.cropped_geometry, target, config.image_interpolation);
      out.geometry = target;
      out.resampled = true;
    }
  }
  out.voxels = io::normalise_intensity(v, config.intensity).contiguous();
  return out;
}

PreprocessedImage preprocess_labels(const Image& labels, const PreprocessedImage& reference) {
  check_voxels_match(labels, "preprocess_labels");
  if (!labels.geometry.same_grid(reference.source_geometry))
    throw Error((labels.source.empty() ? "<labels>" : labels.source) + " vs " +
                    (reference.source.empty() ? "<image>" : reference.source),
                "labels are not on the image's grid: " + labels.geometry.describe() + " vs " +
                    reference.source_geometry.describe());
  PreprocessedImage out = reference;
  out.source = labels.source;
  at::Tensor v = reorient_and_crop(labels.voxels.to(at::kInt), out, /*find_crop=*/false);
  if (reference.resampled) v = resample_voxels(v, out.cropped_geometry, reference.geometry,
                                               reference.config.label_interpolation);
  out.voxels = v.contiguous();
  return out;
}

Image invert_to_source(const at::Tensor& voxels, const PreprocessedImage& p, bool is_label) {
  if (!voxels.defined() || voxels.dim() < 3 || voxels.dim() > 4 || voxels.size(-1) != p.geometry.size[0] ||
      voxels.size(-2) != p.geometry.size[1] || voxels.size(-3) != p.geometry.size[2])
    throw Error("invert_to_source", "tensor of shape " +
                                        (voxels.defined() ? c10::str(voxels.sizes()) : std::string("<none>")) +
                                        " is not on the preprocessed grid (" + p.geometry.describe() + ")");
  at::Tensor v = is_label ? voxels.to(at::kInt) : voxels.to(at::kFloat);
  if (p.resampled)
    v = resample_voxels(v, p.geometry, p.cropped_geometry,
                        is_label ? p.config.label_interpolation : Interpolation::kLinear);
  if (!p.crop.covers_whole(p.reoriented_geometry)) v = pad_back(v, p.crop, p.reoriented_geometry, 0.0);
  Image out;
  out.voxels = undo_reorientation(v, p.reorientation);
  out.geometry = p.source_geometry;
  out.source = p.source;
  return out;
}

}  // namespace iris::io
