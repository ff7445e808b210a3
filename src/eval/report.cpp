#include "iris/eval/report.h"

#include <vector>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <unistd.h>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/io/image_io.h"
#include "iris/io/png.h"

namespace fs = std::filesystem;

namespace iris::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr LabelColour kMarkerColour{0, 200, 255};
constexpr uint8_t kBlankGrey = 20;
using Rgb = LabelColour;

// The prediction's fill over the grey image: this share of the class colour.
constexpr double kFillOpacity = 0.4;

struct RgbPicture {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes a pixel
  void set(int64_t x, int64_t y, Rgb c) {
    uint8_t* p = &rgb[3 * (y * width + x)];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
};

void write_png(const RgbPicture& picture, const std::string& path) {
  io::write_png_rgb(path, picture.width, picture.height, picture.rgb);
}

// Which voxel axis (x=0, y=1, z=2) runs closest to each patient axis (L, P, S
// in LPS), and in which sense: the permutation with the largest total
// alignment, so oblique scans still get three distinct axes.
struct AxisMap {
  std::array<int, 3> voxel_axis{0, 1, 2};   // indexed by patient axis
  std::array<int, 3> sign{1, 1, 1};         // +1: voxel index grows with L/P/S
};

AxisMap axis_map_of(const Geometry& g) {
  // direction is row-major with the voxel axes as columns: component r of axis a.
  auto component = [&](int r, int a) { return g.direction[3 * r + a]; };
  std::array<int, 3> perm{0, 1, 2}, best = perm;
  double best_score = -1;
  do {
    double score = 0;
    for (int p = 0; p < 3; ++p) score += std::abs(component(p, perm[p]));
    if (score > best_score) best_score = score, best = perm;
  } while (std::next_permutation(perm.begin(), perm.end()));
  AxisMap m;
  for (int p = 0; p < 3; ++p) {
    m.voxel_axis[p] = best[p];
    m.sign[p] = component(p, best[p]) >= 0 ? 1 : -1;
  }
  return m;
}

enum class View { kAxial, kCoronal, kSagittal };
const char* view_name(View v) {
  return v == View::kAxial ? "axial" : v == View::kCoronal ? "coronal" : "sagittal";
}

// Radiological display: patient right on the viewer's left, anterior / superior up.
struct ViewAxes {
  int normal, column, row;           // patient axes 0=L 1=P 2=S
  int column_sense, row_sense;       // +1: patient coordinate grows rightwards / downwards
};
ViewAxes view_axes(View v) {
  switch (v) {
    case View::kAxial: return {2, 0, 1, +1, +1};
    case View::kCoronal: return {1, 0, 2, +1, -1};
    default: return {0, 1, 2, +1, -1};
  }
}

// Everything a slice is drawn from: both label maps, optional intensities
// with their display window, on one grid.
struct CaseVolumes {
  at::Tensor reference, prediction;  // int32 [Z,Y,X], contiguous
  at::Tensor intensity;              // float [Z,Y,X] or undefined
  double window_low = 0, window_high = 1;
  Geometry geometry;
};

// numpy-style percentiles of (a strided subsample of) the intensities.
std::pair<double, double> percentile_window(const at::Tensor& voxels) {
  at::Tensor flat = voxels.reshape({-1});
  const int64_t stride = std::max<int64_t>(1, flat.numel() / (1 << 22));
  at::Tensor sample = flat.slice(0, 0, flat.numel(), stride).contiguous();
  std::vector<float> a(sample.data_ptr<float>(), sample.data_ptr<float>() + sample.numel());
  std::vector<float> b = a;
  const double low = percentile(a, 1.0), high = percentile(b, 99.0);
  return {low, high > low ? high : low + 1.0};
}

// Voxel count along voxel axis x=0, y=1, z=2 of a [Z,Y,X] tensor.
int64_t size_along(const at::Tensor& t, int voxel_axis) { return t.size(2 - voxel_axis); }

// `shown` gains the labels drawn in the picture (for the case's legend).
RgbPicture render_slice(const CaseVolumes& volumes, View view, const std::array<int64_t, 3>& zyx,
                        std::set<int32_t>* shown) {
  const AxisMap axes = axis_map_of(volumes.geometry);
  const ViewAxes va = view_axes(view);
  const int normal_axis = axes.voxel_axis[va.normal];
  const int column_axis = axes.voxel_axis[va.column];
  const int row_axis = axes.voxel_axis[va.row];
  // Voxel index in xyz order of the largest error.
  const std::array<int64_t, 3> at_xyz{zyx[2], zyx[1], zyx[0]};
  const int64_t n_col = size_along(volumes.reference, column_axis);
  const int64_t n_row = size_along(volumes.reference, row_axis);
  const double sp_col = volumes.geometry.spacing[column_axis];
  const double sp_row = volumes.geometry.spacing[row_axis];
  // Square output pixels at physical aspect ratio; the long side 320–512 px.
  const double extent_col = n_col * sp_col, extent_row = n_row * sp_row;
  const double target = std::clamp<double>(std::max(n_col, n_row), 320, 512);
  const double pixel_mm = std::max(extent_col, extent_row) / target;
  RgbPicture pic;
  pic.width = std::max<int64_t>(1, std::lround(extent_col / pixel_mm));
  pic.height = std::max<int64_t>(1, std::lround(extent_row / pixel_mm));
  pic.rgb.assign(3 * pic.width * pic.height, kBlankGrey);

  const bool flip_col = axes.sign[va.column] * va.column_sense < 0;
  const bool flip_row = axes.sign[va.row] * va.row_sense < 0;
  auto voxel_of = [](double pos_mm, double spacing, int64_t n, bool flip) {
    const int64_t i = std::clamp<int64_t>(static_cast<int64_t>(pos_mm / spacing), 0, n - 1);
    return flip ? n - 1 - i : i;
  };
  std::vector<int64_t> col_voxel(pic.width), row_voxel(pic.height);
  for (int64_t c = 0; c < pic.width; ++c)
    col_voxel[c] = voxel_of((c + 0.5) * pixel_mm, sp_col, n_col, flip_col);
  for (int64_t r = 0; r < pic.height; ++r)
    row_voxel[r] = voxel_of((r + 0.5) * pixel_mm, sp_row, n_row, flip_row);

  const int64_t nx = volumes.reference.size(2), ny = volumes.reference.size(1);
  auto linear_index = [&](int64_t r, int64_t c) {
    std::array<int64_t, 3> xyz{};
    xyz[normal_axis] = at_xyz[normal_axis];
    xyz[column_axis] = col_voxel[c];
    xyz[row_axis] = row_voxel[r];
    return (xyz[2] * ny + xyz[1]) * nx + xyz[0];
  };
  const int32_t* ref = volumes.reference.data_ptr<int32_t>();
  const int32_t* pred = volumes.prediction.data_ptr<int32_t>();
  const float* intensity = volumes.intensity.defined() ? volumes.intensity.data_ptr<float>() : nullptr;
  std::vector<int32_t> ref_px(pic.width * pic.height), pred_px(ref_px.size());
  for (int64_t r = 0; r < pic.height; ++r)
    for (int64_t c = 0; c < pic.width; ++c) {
      const int64_t i = linear_index(r, c);
      ref_px[r * pic.width + c] = ref[i];
      pred_px[r * pic.width + c] = pred[i];
      if (intensity) {
        const double t = (intensity[i] - volumes.window_low) / (volumes.window_high - volumes.window_low);
        const auto grey = static_cast<uint8_t>(std::lround(255 * std::clamp(t, 0.0, 1.0)));
        pic.set(c, r, {grey, grey, grey});
      }
    }
  // The prediction: each class filled in its colour, translucent over the image.
  int32_t last_shown = 0;
  for (int64_t r = 0; r < pic.height; ++r)
    for (int64_t c = 0; c < pic.width; ++c) {
      const int32_t v = pred_px[r * pic.width + c];
      if (v == 0) continue;
      const LabelColour colour = label_colour(v);
      uint8_t* p = &pic.rgb[3 * (r * pic.width + c)];
      for (int k = 0; k < 3; ++k) {
        const uint8_t channel = k == 0 ? colour.r : k == 1 ? colour.g : colour.b;
        p[k] = static_cast<uint8_t>(std::lround((1 - kFillOpacity) * p[k] + kFillOpacity * channel));
      }
      if (v != last_shown) shown->insert(v), last_shown = v;
    }
  // The reference: each class outlined in its colour, at display resolution
  // (one pixel wide): a labelled pixel with a 4-neighbour of another label;
  // outside the picture counts as background, so neighbouring structures of
  // a multi-label map are separated too.
  auto is_outline = [&](const std::vector<int32_t>& px, int64_t r, int64_t c) {
    const int32_t v = px[r * pic.width + c];
    if (v == 0) return false;
    const int64_t dr[4] = {-1, 1, 0, 0}, dc[4] = {0, 0, -1, 1};
    for (int k = 0; k < 4; ++k) {
      const int64_t rr = r + dr[k], cc = c + dc[k];
      if (rr < 0 || cc < 0 || rr >= pic.height || cc >= pic.width) return true;
      if (px[rr * pic.width + cc] != v) return true;
    }
    return false;
  };
  for (int64_t r = 0; r < pic.height; ++r)
    for (int64_t c = 0; c < pic.width; ++c)
      if (is_outline(ref_px, r, c)) {
        const int32_t v = ref_px[r * pic.width + c];
        pic.set(c, r, label_colour(v));
        shown->insert(v);
      }
  // Ticks on the picture edges point at the largest error without hiding it.
  auto first_pixel_of = [](const std::vector<int64_t>& voxel_at, int64_t voxel) {
    for (size_t p = 0; p < voxel_at.size(); ++p)
      if (voxel_at[p] == voxel) return static_cast<int64_t>(p);
    return int64_t{-1};
  };
  const int64_t mark_c = first_pixel_of(col_voxel, at_xyz[column_axis]);
  const int64_t mark_r = first_pixel_of(row_voxel, at_xyz[row_axis]);
  const int64_t tick = std::max<int64_t>(6, std::min(pic.width, pic.height) / 30);
  for (int64_t k = 0; k < tick; ++k) {
    if (mark_c >= 0 && k < pic.height) {
      pic.set(mark_c, k, kMarkerColour);
      pic.set(mark_c, pic.height - 1 - k, kMarkerColour);
    }
    if (mark_r >= 0 && k < pic.width) {
      pic.set(k, mark_r, kMarkerColour);
      pic.set(pic.width - 1 - k, mark_r, kMarkerColour);
    }
  }
  return pic;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// File names from case names: portable characters only, made unique by rank.
std::string file_stem(size_t rank, const std::string& case_name) {
  std::string safe;
  for (char c : case_name)
    safe += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '_';
  std::string prefix = std::to_string(rank + 1);
  prefix.insert(0, prefix.size() < 3 ? 3 - prefix.size() : 0, '0');  // 001_, 002_, ... sort as ranked
  return prefix + "_" + safe.substr(0, 80);
}

std::string number(double v, int digits) {
  if (std::isnan(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

double mean_dice(const CaseResult& c) {
  double sum = 0;
  int n = 0;
  for (const auto& m : c.labels)
    if (!std::isnan(m.dice)) sum += m.dice, ++n;
  return n ? sum / n : kNaN;
}

std::string label_title(const EvaluationSummary& s, int32_t label) {
  auto it = s.label_names.find(label);
  return it == s.label_names.end() ? std::to_string(label)
                                   : std::to_string(label) + " " + it->second;
}

std::string dice_box_plot_svg(const EvaluationSummary& summary) {
  const size_t n = summary.labels.size();
  const double slot = n > 40 ? 12.0 : 36.0;
  const double left = 50, top = 20, plot_h = 240, bottom = 70;
  const double width = std::max(400.0, left + 20 + slot * n);
  const double height = top + plot_h + bottom;
  auto y_of = [&](double dice) { return top + (1.0 - dice) * plot_h; };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"boxplot\" width=\"" << width
    << "\" height=\"" << height << "\" viewBox=\"0 0 " << width << " " << height << "\">\n";
  for (double tick : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    s << "<line x1=\"" << left << "\" x2=\"" << width - 10 << "\" y1=\"" << y_of(tick)
      << "\" y2=\"" << y_of(tick) << "\" stroke=\"#ddd\"/>";
    s << "<text x=\"" << left - 6 << "\" y=\"" << y_of(tick) + 4
      << "\" text-anchor=\"end\" font-size=\"11\">" << number(tick, 2) << "</text>\n";
  }
  s << "<text x=\"12\" y=\"" << top + plot_h / 2 << "\" transform=\"rotate(-90 12 "
    << top + plot_h / 2 << ")\" text-anchor=\"middle\" font-size=\"12\">Dice</text>\n";
  for (size_t i = 0; i < n; ++i) {
    const int32_t label = summary.labels[i];
    std::vector<double> values;
    for (const auto& c : summary.cases)
      for (const auto& m : c.labels)
        if (m.label == label) values.push_back(m.dice);
    const BoxStatistics b = box_statistics(values);
    const double cx = left + 10 + slot * (i + 0.5), half = slot * 0.3;
    s << "<g><title>" << html_escape(label_title(summary, label)) << ": n=" << b.count;
    if (b.count) s << ", median " << number(b.median, 4) << ", IQR " << number(b.q1, 4) << "–" << number(b.q3, 4);
    s << "</title>";
    if (b.count) {
      s << "<line x1=\"" << cx << "\" x2=\"" << cx << "\" y1=\"" << y_of(b.whisker_high) << "\" y2=\""
        << y_of(b.whisker_low) << "\" stroke=\"#333\"/>";
      s << "<rect x=\"" << cx - half << "\" y=\"" << y_of(b.q3) << "\" width=\"" << 2 * half
        << "\" height=\"" << std::max(1.0, y_of(b.q1) - y_of(b.q3))
        << "\" fill=\"#9ecae1\" stroke=\"#333\"/>";
      s << "<line x1=\"" << cx - half << "\" x2=\"" << cx + half << "\" y1=\"" << y_of(b.median)
        << "\" y2=\"" << y_of(b.median) << "\" stroke=\"#d62728\" stroke-width=\"2\"/>";
      for (double o : b.outliers)
        s << "<circle cx=\"" << cx << "\" cy=\"" << y_of(o) << "\" r=\"2.5\" fill=\"none\" stroke=\"#333\"/>";
    }
    const double ty = top + plot_h + 12;
    s << "<text x=\"" << cx << "\" y=\"" << ty << "\" font-size=\"10\" text-anchor=\"end\" transform=\"rotate(-60 "
      << cx << " " << ty << ")\">" << html_escape(label_title(summary, label)) << "</text></g>\n";
  }
  s << "</svg>\n";
  return s.str();
}

std::string case_table_html(const EvaluationSummary& summary, const std::vector<size_t>& order) {
  std::ostringstream s;
  s << "<table><tr><th>case</th><th>label</th><th>name</th><th>Dice</th><th>IoU</th>"
       "<th>HD95 mm</th><th>HD mm</th><th>ASSD mm</th><th>NSD</th><th>n_ref</th><th>n_pred</th>"
       "<th>Volume diff mm³</th></tr>\n";
  for (size_t idx : order) {
    const CaseResult& c = summary.cases[idx];
    for (const auto& m : c.labels) {
      auto name = summary.label_names.find(m.label);
      s << "<tr><td>" << html_escape(c.files.case_name) << "</td><td>" << m.label << "</td><td>"
        << html_escape(name != summary.label_names.end() ? name->second : "") << "</td><td>"
        << number(m.dice, 4) << "</td><td>" << number(m.iou, 4) << "</td><td>"
        << number(m.hausdorff_95_mm, 2) << "</td><td>" << number(m.hausdorff_max_mm, 2) << "</td><td>"
        << number(m.average_surface_distance_mm, 2) << "</td><td>" << number(m.normalized_surface_dice, 4)
        << "</td><td>" << m.reference_voxels << "</td><td>" << m.prediction_voxels << "</td><td>"
        << number(m.volume_difference_mm3, 1) << "</td></tr>\n";
    }
  }
  return s.str() + "</table>\n";
}

std::string mean_table_html(const EvaluationSummary& summary) {
  const std::vector<std::pair<std::string, int>> shown{
      {"Dice", 4}, {"IoU", 4}, {"HD95", 2}, {"HD", 2}, {"ASSD", 2}, {"NSD", 4}};
  std::ostringstream s;
  s << "<table><tr><th>label</th><th>name</th><th>cases</th>";
  for (const auto& [name, digits] : shown) s << "<th>" << name << "</th>";
  s << "</tr>\n";
  for (int32_t label : summary.labels) {
    auto name = summary.label_names.find(label);
    s << "<tr><td>" << label << "</td><td>"
      << html_escape(name != summary.label_names.end() ? name->second : "") << "</td><td>"
      << mean_std_over_cases(summary, label, "Dice").count << "</td>";
    for (const auto& [metric, digits] : shown) {
      const MeanStd v = mean_std_over_cases(summary, label, metric);
      s << "<td>" << number(v.mean, digits) << " ± " << number(v.std, digits) << "</td>";
    }
    s << "</tr>\n";
  }
  return s.str() + "</table>\n";
}

CaseVolumes load_case(const CaseResult& c, const std::string& image_file) {
  CaseVolumes v;
  Image reference = io::read_labels(c.files.reference_file);
  Image prediction = io::read_labels(c.files.prediction_file);
  io::check_same_grid(reference, prediction);
  v.geometry = reference.geometry;
  v.reference = reference.voxels.contiguous();
  v.prediction = prediction.voxels.contiguous();
  if (!image_file.empty()) {
    Image image = io::read_image(image_file);
    try {
      io::check_same_grid(reference, image);
    } catch (const Error& e) {
      throw Error(image_file, "case '" + c.files.case_name + "': image grid differs from reference " +
                                  c.files.reference_file + " (" + e.reason() + ")");
    }
    v.intensity = image.voxels.to(at::kFloat).contiguous();
    std::tie(v.window_low, v.window_high) = percentile_window(v.intensity);
  }
  return v;
}

void write_text_file(const fs::path& path, const std::string& text) { iris::write_text_file(path.string(), text); }

void build_report(const EvaluationSummary& summary, const fs::path& dir,
                  const std::map<std::string, std::string>& images, bool with_images) {
  const std::vector<size_t> order = cases_worst_first(summary);
  std::ostringstream cases_html;
  for (size_t rank = 0; rank < order.size(); ++rank) {
    const CaseResult& c = summary.cases[order[rank]];
    const auto image = images.find(c.files.case_name);
    const CaseVolumes volumes =
        load_case(c, with_images && image != images.end() ? image->second : "");
    std::array<int64_t, 3> zyx = largest_error_zyx(c);
    const bool has_error = zyx[0] >= 0;
    if (!has_error)
      for (int a = 0; a < 3; ++a) zyx[a] = volumes.reference.size(a) / 2;
    const std::string stem = file_stem(rank, c.files.case_name);
    cases_html << "<section class=\"case\"><h3>" << rank + 1 << ". " << html_escape(c.files.case_name)
               << " <span class=\"muted\">mean Dice " << number(mean_dice(c), 4) << "</span></h3>\n"
               << "<p class=\"muted\">" << html_escape(c.files.reference_file) << " vs "
               << html_escape(c.files.prediction_file) << "<br>"
               << (has_error ? "slices through the largest error" : "no error: central slices")
               << " at voxel (x, y, z) = (" << zyx[2] << ", " << zyx[1] << ", " << zyx[0] << ")</p>\n<div class=\"slices\">";
    std::set<int32_t> shown;
    for (View view : {View::kAxial, View::kCoronal, View::kSagittal}) {
      const RgbPicture pic = render_slice(volumes, view, zyx, &shown);
      const std::string png = stem + "_" + view_name(view) + ".png";
      write_png(pic, (dir / png).string());
      cases_html << "<figure><img src=\"" << html_escape(png) << "\" width=\"" << pic.width
                 << "\" height=\"" << pic.height << "\" alt=\"" << view_name(view) << " slice of "
                 << html_escape(c.files.case_name) << "\"><figcaption>" << view_name(view)
                 << "</figcaption></figure>";
    }
    cases_html << "</div>\n<p class=\"legend\">";
    if (shown.empty()) cases_html << "no structure in these slices";
    for (int32_t label : shown)
      cases_html << "<span class=\"swatch\" style=\"background:" << colour_hex(label_colour(label))
                 << "\"></span>" << html_escape(label_title(summary, label));
    cases_html << "</p></section>\n";
  }

  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<title>iris-eval report</title>\n<style>\n"
          "body{font-family:sans-serif;margin:16px;color:#222;background:#fff}\n"
          "table{border-collapse:collapse;font-size:12px;margin-bottom:16px}\n"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\n"
          "th{background:#f0f0f0}\n.muted{color:#666;font-size:12px;font-weight:normal}\n"
          ".slices{display:flex;flex-wrap:wrap;gap:8px}\nfigure{margin:0}\n"
          "figcaption{font-size:12px;text-align:center}\n"
          ".legend{font-size:12px}\n"
          ".legend .swatch{display:inline-block;width:12px;height:12px;margin:0 4px -2px 10px}\n"
          "</style></head><body>\n<h1>iris-eval report</h1>\n";
  html << "<p>" << summary.cases.size() << " case(s), " << summary.labels.size()
       << " label(s); NSD tolerance " << number(summary.tolerance_mm, 2)
       << " mm. Distances in mm between surface voxels (docs/evaluation.md).</p>\n";
  // Many labels make a wide plot: it scrolls instead of widening the page.
  html << "<h2>Dice per label</h2>\n<div style=\"overflow-x:auto\">" << dice_box_plot_svg(summary)
       << "</div>\n";
  html << "<h2>Cases, worst first</h2>\n<p class=\"legend\">Each class has its own colour (the legend under "
          "each case): the reference is its outline, the prediction its translucent fill; "
          "<span class=\"swatch\" style=\"background:" << colour_hex(kMarkerColour)
       << "\"></span>ticks on the edges point at the largest error.</p>\n"
       << cases_html.str();
  html << "<h2>Mean ± std per label</h2>\n" << mean_table_html(summary);
  html << "<h2>Per case and label</h2>\n" << case_table_html(summary, order);
  html << "</body></html>\n";
  write_text_file(dir / "index.html", html.str());
}

}  // namespace

LabelColour label_colour(int32_t label) {
  // 18 of Sasha Trubetzkoy's distinct colours (no white, black, grey or the
  // cyan of the error ticks), cycled: label 1 red, 2 green, 3 yellow, 4 blue...
  static constexpr LabelColour kPalette[] = {
      {230, 25, 75},   {60, 180, 75},  {255, 225, 25}, {0, 130, 200},   {245, 130, 48},  {145, 30, 180},
      {240, 50, 230},  {210, 245, 60}, {250, 190, 212}, {0, 128, 128},  {220, 190, 255}, {170, 110, 40},
      {255, 250, 200}, {128, 0, 0},    {170, 255, 195}, {128, 128, 0},  {255, 215, 180}, {0, 0, 128}};
  constexpr int64_t n = sizeof kPalette / sizeof kPalette[0];
  return kPalette[((static_cast<int64_t>(label) - 1) % n + n) % n];
}

std::string colour_hex(LabelColour c) {
  char text[8];
  std::snprintf(text, sizeof text, "#%02x%02x%02x", c.r, c.g, c.b);
  return text;
}

std::map<std::string, std::string> match_images(const std::string& image,
                                                const std::vector<CasePair>& pairs) {
  std::map<std::string, std::string> out;
  if (image.empty()) return out;
  if (!fs::exists(image)) throw InputError(image, setting_ref("image") + " does not exist");
  if (!fs::is_directory(image)) {
    if (pairs.size() != 1)
      throw InputError(image, "one " + setting_ref("image") + " file given for " + std::to_string(pairs.size()) +
                                  " cases; pass a folder matched by case name");
    out[pairs[0].case_name] = image;
    return out;
  }
  std::map<std::string, std::string> by_name;
  for (const auto& entry : fs::directory_iterator(image)) {
    if (!entry.is_regular_file()) continue;
    if (has_image_extension(entry.path().string())) by_name[case_name(entry.path().string())] = entry.path().string();
  }
  std::vector<std::string> missing;
  for (const auto& pair : pairs) {
    auto it = by_name.find(pair.case_name);
    if (it == by_name.end()) it = by_name.find(pair.case_name + "_0000");
    if (it == by_name.end()) missing.push_back(pair.case_name);
    else out[pair.case_name] = it->second;
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 20; ++i) list += (i ? ", " : "") + missing[i];
    throw Error(image, "no image for case(s) " + list);
  }
  return out;
}

BoxStatistics box_statistics(const std::vector<double>& values) {
  std::vector<float> finite;
  for (double v : values)
    if (std::isfinite(v)) finite.push_back(static_cast<float>(v));
  BoxStatistics b;
  b.count = static_cast<int64_t>(finite.size());
  if (finite.empty()) return b;
  std::vector<float> work = finite;
  b.q1 = percentile(work, 25);
  b.median = percentile(work, 50);
  b.q3 = percentile(work, 75);
  const double iqr = b.q3 - b.q1, low_fence = b.q1 - 1.5 * iqr, high_fence = b.q3 + 1.5 * iqr;
  b.whisker_low = b.q3;
  b.whisker_high = b.q1;
  for (float v : finite) {
    if (v < low_fence || v > high_fence) {
      b.outliers.push_back(v);
      continue;
    }
    b.whisker_low = std::min<double>(b.whisker_low, v);
    b.whisker_high = std::max<double>(b.whisker_high, v);
  }
  std::sort(b.outliers.begin(), b.outliers.end());
  return b;
}

std::vector<size_t> cases_worst_first(const EvaluationSummary& summary) {
  std::vector<size_t> order(summary.cases.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::vector<double> score(order.size());
  for (size_t i = 0; i < order.size(); ++i) score[i] = mean_dice(summary.cases[i]);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const bool a_nan = std::isnan(score[a]), b_nan = std::isnan(score[b]);
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && score[a] != score[b]) return score[a] < score[b];
    return summary.cases[a].files.case_name < summary.cases[b].files.case_name;
  });
  return order;
}

std::array<int64_t, 3> largest_error_zyx(const CaseResult& result) {
  std::array<int64_t, 3> best{-1, -1, -1};
  double best_distance = -std::numeric_limits<double>::infinity();
  for (const auto& m : result.labels) {
    if (m.worst_error_zyx[0] < 0) continue;
    // A label with an error but no distance (one map empty) ranks below any HD.
    const double d = std::isnan(m.hausdorff_max_mm) ? -1.0 : m.hausdorff_max_mm;
    if (d > best_distance) best_distance = d, best = m.worst_error_zyx;
  }
  return best;
}

// The list of the files a report folder holds, written with them.
constexpr const char* kManifest = ".iris-report";

void write_html_report(const EvaluationSummary& summary, const std::string& dir,
                       const ReportOptions& options) {
  std::vector<CasePair> pairs;
  for (const auto& c : summary.cases) pairs.push_back(c.files);
  const auto images = match_images(options.image, pairs);

  fs::path final_dir = fs::absolute(dir).lexically_normal();
  if (final_dir.filename().empty()) final_dir = final_dir.parent_path();  // "out/" -> "out"
  // An earlier report is replaced only when it holds nothing but what iris
  // wrote there (its manifest's files): a user's own files are never deleted.
  if (fs::exists(final_dir)) {
    if (!fs::is_directory(final_dir)) throw InputError(dir, setting_ref("html") + " needs a folder, but this is a file");
    if (!fs::is_empty(final_dir)) {
      std::set<std::string> listed;
      std::ifstream manifest(final_dir / kManifest);
      for (std::string line; std::getline(manifest, line);)
        if (!line.empty()) listed.insert(line);
      if (listed.empty())
        throw Error(dir, "is not empty and is not an iris report (no " + std::string(kManifest) +
                             "): not replacing it; choose a new or empty folder");
      std::vector<std::string> foreign;
      for (const auto& e : fs::recursive_directory_iterator(final_dir)) {
        const std::string rel = e.path().lexically_relative(final_dir).generic_string();
        if (rel != kManifest && !listed.count(rel) && !(e.is_directory() && !e.is_symlink())) foreign.push_back(rel);
      }
      if (!foreign.empty())
        throw Error(dir, "holds " + std::to_string(foreign.size()) + " file(s) iris did not write (" + foreign.front() +
                             (foreign.size() > 1 ? ", ..." : "") + "): not replacing it; choose a new or empty folder");
    }
  }
  const fs::path parent = final_dir.parent_path();
  fs::create_directories(parent);
  const std::string tag = std::to_string(::getpid());
  const fs::path partial = parent / ("." + final_dir.filename().string() + ".partial-" + tag);
  fs::remove_all(partial);
  fs::create_directory(partial);
  try {
    build_report(summary, partial, images, !options.image.empty());
    std::string listing;
    for (const auto& e : fs::recursive_directory_iterator(partial))
      if (e.is_regular_file()) listing += e.path().lexically_relative(partial).generic_string() + "\n";
    write_text_file((partial / kManifest).string(), listing);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(partial, ignored);
    throw;
  }
  // A directory cannot be renamed over a non-empty one: move the old report
  // aside first. DIR is never a half-written report (at worst briefly absent).
  if (fs::exists(final_dir)) {
    const fs::path old = parent / ("." + final_dir.filename().string() + ".old-" + tag);
    fs::remove_all(old);
    fs::rename(final_dir, old);
    fs::rename(partial, final_dir);
    fs::remove_all(old);
  } else {
    fs::rename(partial, final_dir);
  }
}

}  // namespace iris::eval
