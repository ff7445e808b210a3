#include "iris/io/image_io.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/io/dicom.h"
#include "image_checks.h"
#include "nifti.h"

namespace fs = std::filesystem;

namespace iris::io {

namespace detail {

void check_geometry(const Geometry& g, const std::string& source) {
  for (int i = 0; i < 3; ++i)
    if (!(g.spacing[i] > 0) || !std::isfinite(g.spacing[i]) || !std::isfinite(g.origin[i]))
      throw Error(source, "has an invalid spacing or origin (" + g.describe() + ")");
  // Columns of `direction` are the axes; they must be unit length and
  // mutually perpendicular, or every mm computed later would be wrong. The
  // tolerance allows float32 header storage (NIfTI) and rounded DICOM strings.
  constexpr double tol = 1e-3;
  for (int a = 0; a < 3; ++a)
    for (int b = a; b < 3; ++b) {
      double dot = 0;
      for (int r = 0; r < 3; ++r) dot += g.direction[3 * r + a] * g.direction[3 * r + b];
      const double expected = a == b ? 1.0 : 0.0;
      if (!(std::abs(dot - expected) <= tol)) {
        std::ostringstream m;
        m << "has a direction matrix that is not orthonormal (columns " << a << "," << b << " dot product " << dot
          << "; sheared or scaled axes are not supported)";
        throw Error(source, m.str());
      }
    }
}

void check_finite(at::Tensor& voxels, const std::string& source, double nan_as, std::vector<std::string>* warnings) {
  if (!at::isFloatingType(voxels.scalar_type())) return;
  const at::Tensor bad_mask = ~at::isfinite(voxels);
  const int64_t bad = bad_mask.sum().item<int64_t>();
  if (bad == 0) return;
  if (!std::isfinite(nan_as))
    throw Error(source, "has " + std::to_string(bad) + " NaN or infinite voxel(s) of " +
                            std::to_string(voxels.numel()) +
                            " (a damaged or unfinished image? iris-infer --nan-as VALUE replaces them)");
  voxels.masked_fill_(bad_mask, nan_as);
  if (warnings)
    warnings->push_back(std::to_string(bad) + " NaN or infinite voxel(s) replaced by " + std::to_string(nan_as) +
                        " (" + setting_name("nan_as") + ")");
}

}  // namespace detail

namespace {

void check_is_file(const std::string& path) {
  if (!fs::exists(path)) throw Error(path, "file not found");
  if (!fs::is_regular_file(path)) throw Error(path, "is not a regular file");
}

// Labels: whole numbers from 0 to the int32 maximum, named when not.
at::Tensor to_label_voxels(const at::Tensor& voxels, const std::string& path) {
  if (voxels.numel() == 0) return voxels.to(at::kInt);
  if (at::isFloatingType(voxels.scalar_type())) {
    const at::Tensor finite = at::isfinite(voxels);
    if (!finite.all().item<bool>())
      throw Error(path, "has NaN or infinite values; a label image holds whole numbers >= 0");
    const at::Tensor fractional = voxels != voxels.round();
    if (fractional.any().item<bool>()) {
      const double example = voxels.masked_select(fractional)[0].item<double>();
      throw Error(path, "has " + std::to_string(fractional.sum().item<int64_t>()) + " non-integer voxel(s) (e.g. " +
                            std::to_string(example) + "); a label image holds whole numbers >= 0");
    }
  }
  const double lowest = voxels.min().item<double>(), highest = voxels.max().item<double>();
  if (lowest < 0)
    throw Error(path, "has label value " + std::to_string(static_cast<long long>(lowest)) +
                          "; labels must be whole numbers >= 0 (0 is background)");
  if (highest > 2147483647.0)
    throw Error(path, "has label value " + std::to_string(static_cast<long long>(highest)) + ", above the int32 range");
  return voxels.to(at::kInt);
}

}  // namespace

Image read_image(const std::string& path, const ImageReadOptions& options) {
  Image out;
  if (options.components && !detail::is_nifti_path(path))
    throw Error(path, "images with components (4-D) are read from NIfTI files only");
  if (fs::is_directory(path)) {
    out = read_dicom_series(path);
  } else if (detail::is_nifti_path(path)) {
    detail::NiftiVolume v = detail::read_nifti(path, options.prefer_sform, options.components);
    out = std::move(v.image);
    out.voxels = out.voxels.to(at::kFloat);
    if (v.scaled()) out.voxels = out.voxels.mul(v.slope).add(v.intercept);
  } else {
    check_is_file(path);
    out = detail::read_with_itk(path, false);
  }
  detail::check_geometry(out.geometry, path);
  detail::check_finite(out.voxels, path, options.nan_as, &out.warnings);
  return out;
}

Image read_labels(const std::string& path, const ImageReadOptions& options) {
  Image out;
  if (fs::is_directory(path)) {
    out = read_dicom_series(path);
  } else if (detail::is_nifti_path(path)) {
    detail::NiftiVolume v = detail::read_nifti(path, options.prefer_sform);
    out = std::move(v.image);
    if (v.scaled()) out.voxels = out.voxels.to(at::kDouble).mul(v.slope).add(v.intercept);
  } else {
    check_is_file(path);
    out = detail::read_with_itk(path, true);
  }
  detail::check_geometry(out.geometry, path);
  out.voxels = to_label_voxels(out.voxels, path);
  return out;
}

void check_same_grid(const Image& a, const Image& b, double tol) {
  if (a.geometry.same_grid(b.geometry, tol)) return;
  const std::string name_a = a.source.empty() ? "<in-memory image>" : a.source;
  const std::string name_b = b.source.empty() ? "<in-memory image>" : b.source;
  throw Error(name_a + " vs " + name_b, "images are not on the same voxel grid: " + a.geometry.describe() + " vs " +
                                            b.geometry.describe());
}

void write_image(const Image& image, const std::string& path) {
  const std::string ext = full_extension(path);
  const bool nifti = ext == ".nii" || ext == ".nii.gz";
  if (!nifti && ext != ".nrrd" && ext != ".mha" && ext != ".mhd")
    throw Error(path, "unknown output format '" + ext + "' (use .nii, .nii.gz, .nrrd, .mha or .mhd)");
  const at::Tensor& v = image.voxels;
  if (!v.defined() || (v.dim() != 3 && v.dim() != 4)) throw Error(path, "voxels must be a [Z,Y,X] or [C,Z,Y,X] tensor");
  const auto& g = image.geometry;
  if (v.size(-1) != g.size[0] || v.size(-2) != g.size[1] || v.size(-3) != g.size[2])
    throw Error(path, "tensor shape " + c10::str(v.sizes()) + " does not match the geometry (" + g.describe() + ")");
  if (nifti) return detail::write_nifti(image, path);
  detail::write_with_itk(v.to(at::kCPU).contiguous(), g, path);
}

}  // namespace iris::io
