#include "iris/io/image_io.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOFactory.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/io/dicom.h"
#include "itk_bridge.h"
#include "nifti2.h"

namespace fs = std::filesystem;

namespace iris::io {
namespace detail {

Geometry geometry_of(const itk::ImageBase<3>& image) {
  Geometry g;
  const auto size = image.GetLargestPossibleRegion().GetSize();
  for (int i = 0; i < 3; ++i) {
    g.size[i] = static_cast<long>(size[i]);
    g.spacing[i] = image.GetSpacing()[i];
    g.origin[i] = image.GetOrigin()[i];
    for (int j = 0; j < 3; ++j) g.direction[3 * i + j] = image.GetDirection()(i, j);
  }
  return g;
}

void set_geometry(itk::ImageBase<3>& image, const Geometry& g) {
  itk::ImageBase<3>::SizeType size;
  itk::ImageBase<3>::SpacingType spacing;
  itk::ImageBase<3>::PointType origin;
  itk::ImageBase<3>::DirectionType direction;
  for (unsigned i = 0; i < 3; ++i) {
    size[i] = static_cast<itk::SizeValueType>(g.size[i]);
    spacing[i] = g.spacing[i];
    origin[i] = g.origin[i];
    for (unsigned j = 0; j < 3; ++j) direction(i, j) = g.direction[3 * i + j];
  }
  image.SetRegions(itk::ImageBase<3>::RegionType(size));
  image.SetSpacing(spacing);
  image.SetOrigin(origin);
  image.SetDirection(direction);
}

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
        m << "has a direction matrix that is not orthonormal (columns " << a << "," << b
          << " dot product " << dot << "; sheared or scaled axes are not supported)";
        throw Error(source, m.str());
      }
    }
}

void check_finite(const at::Tensor& voxels, const std::string& source) {
  if (!at::isFloatingType(voxels.scalar_type())) return;
  const auto bad = (~torch::isfinite(voxels)).sum().item<int64_t>();
  if (bad > 0)
    throw Error(source, "has " + std::to_string(bad) + " NaN or infinite voxel(s)");
}

std::string short_reason(const itk::ExceptionObject& e) {
  std::string text = e.GetDescription();
  // "itk::ERROR: NiftiImageIO(0x55...): reason" -> "reason"
  const auto marker = text.find("): ");
  if (text.rfind("itk::ERROR", 0) == 0 && marker != std::string::npos) text = text.substr(marker + 3);
  for (char& c : text)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  if (text.size() > 300) text = text.substr(0, 300) + "...";
  return text.empty() ? "ITK could not read it" : text;
}

}  // namespace detail

namespace {

std::string join_sizes(const std::vector<size_t>& sizes) {
  std::string s;
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "x" : "") + std::to_string(sizes[i]);
  return s;
}

// Opens the file's header and checks it holds one scalar 3-D volume.
itk::ImageIOBase::Pointer open_3d_image(const std::string& path) {
  if (!fs::exists(path)) throw Error(path, "file not found");
  if (!fs::is_regular_file(path)) throw Error(path, "is not a regular file");
  // ITK 5.2 reads a cut-off .gz without complaint, padding with garbage.
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) detail::check_gzip_complete(path);
  itk::ImageIOBase::Pointer io =
      itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::IOFileModeEnum::ReadMode);
  if (!io)
    throw Error(path, "is not an image iris can read (no NIfTI, NRRD or MetaImage header found;"
                      " is the file damaged or misnamed?)");
  io->SetFileName(path);
  try {
    io->ReadImageInformation();
  } catch (const itk::ExceptionObject& e) {
    throw Error(path, "cannot read the image header: " + detail::short_reason(e));
  }
  std::vector<size_t> sizes;
  for (unsigned d = 0; d < io->GetNumberOfDimensions(); ++d) sizes.push_back(io->GetDimensions(d));
  // Trailing axes of length 1 (NIfTI files often say 4-D with one time point)
  // carry no data, so such a file is still a 3-D volume.
  while (sizes.size() > 3 && sizes.back() == 1) sizes.pop_back();
  if (sizes.size() != 3)
    throw Error(path, "is " + std::to_string(sizes.size()) + "-D (" + join_sizes(sizes) +
                          "); a 3-D image is needed");
  if (io->GetNumberOfComponents() != 1)
    throw Error(path, "has " + std::to_string(io->GetNumberOfComponents()) +
                          " components per voxel; a scalar image is needed");
  return io;
}

template <typename Pixel>
Image read_as(const itk::ImageIOBase::Pointer& io, const std::string& path) {
  using ItkImage = itk::Image<Pixel, 3>;
  auto reader = itk::ImageFileReader<ItkImage>::New();
  reader->SetFileName(path);
  reader->SetImageIO(io);
  try {
    reader->Update();
  } catch (const itk::ExceptionObject& e) {
    throw Error(path, "cannot read the voxels: " + detail::short_reason(e));
  }
  typename ItkImage::Pointer image = reader->GetOutput();
  image->DisconnectPipeline();  // the reader may go; the image stays
  Image out = detail::image_from_itk<Pixel>(image, path);
  detail::check_geometry(out.geometry, path);
  return out;
}

bool fits_int32_exactly(itk::IOComponentEnum c) {
  using C = itk::IOComponentEnum;
  return c == C::UCHAR || c == C::CHAR || c == C::USHORT || c == C::SHORT || c == C::INT;
}

Image read_nifti2_checked(const std::string& path) {
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) detail::check_gzip_complete(path);
  Image out = detail::read_nifti2(path);
  detail::check_geometry(out.geometry, path);
  detail::check_finite(out.voxels, path);
  return out;
}

Image labels_from_wide(Image wide, const std::string& path);

}  // namespace

Image read_image(const std::string& path) {
  if (fs::is_directory(path)) return read_dicom_series(path);
  if (fs::is_regular_file(path) && detail::is_nifti2(path)) {
    Image out = read_nifti2_checked(path);
    out.voxels = out.voxels.to(torch::kFloat);
    return out;
  }
  auto io = open_3d_image(path);
  Image out = read_as<float>(io, path);
  detail::check_finite(out.voxels, path);
  return out;
}

Image read_labels(const std::string& path) {
  if (fs::is_directory(path)) {
    Image dicom = read_dicom_series(path);
    if (!torch::equal(dicom.voxels, dicom.voxels.round()))
      throw Error(path, "has non-integer values; a label image is needed");
    dicom.voxels = dicom.voxels.to(torch::kInt);
    return dicom;
  }
  if (fs::is_regular_file(path) && detail::is_nifti2(path)) {
    Image wide = read_nifti2_checked(path);
    return labels_from_wide(std::move(wide), path);
  }
  auto io = open_3d_image(path);
  // Small integer types convert to int32 exactly, straight from the file.
  if (fits_int32_exactly(io->GetComponentType())) return read_as<int32_t>(io, path);
  // Anything else (float, uint32, 64-bit) goes through double and is checked.
  return labels_from_wide(read_as<double>(io, path), path);
}

namespace {
Image labels_from_wide(Image wide, const std::string& path) {
  detail::check_finite(wide.voxels, path);
  const auto& v = wide.voxels;
  const auto non_integer = (v != v.round()).sum().item<int64_t>();
  if (non_integer > 0)
    throw Error(path, "has " + std::to_string(non_integer) +
                          " non-integer voxel(s); a label image is needed");
  if (v.numel() > 0 && (v.min().item<double>() < INT32_MIN || v.max().item<double>() > INT32_MAX))
    throw Error(path, "has label values outside the int32 range");
  wide.voxels = v.to(torch::kInt);
  return wide;
}
}  // namespace

void check_same_grid(const Image& a, const Image& b, double tol) {
  if (a.geometry.same_grid(b.geometry, tol)) return;
  const std::string name_a = a.source.empty() ? "<in-memory image>" : a.source;
  const std::string name_b = b.source.empty() ? "<in-memory image>" : b.source;
  throw Error(name_a + " vs " + name_b, "images are not on the same voxel grid: " +
                                            a.geometry.describe() + " vs " +
                                            b.geometry.describe());
}

// ---------------------------------------------------------------- writing

namespace {

bool is_writable_extension(const std::string& ext) {
  return ext == ".nii" || ext == ".nii.gz" || ext == ".nrrd" || ext == ".mha" || ext == ".mhd";
}

// Wraps the tensor's memory as an ITK image (no copy) and writes it. For a
// 4-D tensor [C,Z,Y,X] the 4th ITK axis is the component, spacing 1.
template <typename Pixel, unsigned Dim>
void write_with_itk(const at::Tensor& voxels, const Geometry& g, const std::string& file,
                    bool compress) {
  using ItkImage = itk::Image<Pixel, Dim>;
  auto image = ItkImage::New();
  typename ItkImage::SizeType size;
  typename ItkImage::SpacingType spacing;
  typename ItkImage::PointType origin;
  typename ItkImage::DirectionType direction;
  direction.SetIdentity();
  for (unsigned i = 0; i < Dim; ++i) {
    size[i] = i < 3 ? static_cast<itk::SizeValueType>(g.size[i])
                    : static_cast<itk::SizeValueType>(voxels.size(0));
    spacing[i] = i < 3 ? g.spacing[i] : 1.0;
    origin[i] = i < 3 ? g.origin[i] : 0.0;
    for (unsigned j = 0; j < 3 && i < 3; ++j) direction(i, j) = g.direction[3 * i + j];
  }
  image->SetRegions(typename ItkImage::RegionType(size));
  image->SetSpacing(spacing);
  image->SetOrigin(origin);
  image->SetDirection(direction);
  // ITK only reads the buffer; it does not own it (last argument false).
  image->GetPixelContainer()->SetImportPointer(const_cast<Pixel*>(voxels.data_ptr<Pixel>()),
                                               static_cast<itk::SizeValueType>(voxels.numel()),
                                               false);
  auto writer = itk::ImageFileWriter<ItkImage>::New();
  writer->SetFileName(file);
  writer->SetInput(image);
  writer->SetUseCompression(compress);
  writer->Update();
}

template <typename Pixel>
void write_any_dim(const at::Tensor& voxels, const Geometry& g, const std::string& file,
                   bool compress) {
  if (voxels.dim() == 3)
    write_with_itk<Pixel, 3>(voxels, g, file, compress);
  else
    write_with_itk<Pixel, 4>(voxels, g, file, compress);
}

void write_by_dtype(const at::Tensor& voxels, const Geometry& g, const std::string& file,
                    bool compress) {
  switch (voxels.scalar_type()) {
    case at::kByte: return write_any_dim<uint8_t>(voxels, g, file, compress);
    case at::kShort: return write_any_dim<int16_t>(voxels, g, file, compress);
    case at::kInt: return write_any_dim<int32_t>(voxels, g, file, compress);
    case at::kFloat: return write_any_dim<float>(voxels, g, file, compress);
    default: break;
  }
  throw Error(file, std::string("cannot write voxels of dtype ") +
                        c10::toString(voxels.scalar_type()) +
                        " (uint8, int16, int32 or float32 are supported)");
}

}  // namespace

void write_image(const Image& image, const std::string& path) {
  const std::string ext = full_extension(path);
  if (!is_writable_extension(ext))
    throw Error(path, "unknown output format '" + ext + "' (use .nii, .nii.gz, .nrrd, .mha or .mhd)");
  const at::Tensor& v = image.voxels;
  if (!v.defined() || (v.dim() != 3 && v.dim() != 4))
    throw Error(path, "voxels must be a [Z,Y,X] or [C,Z,Y,X] tensor");
  const auto& g = image.geometry;
  if (v.size(-1) != g.size[0] || v.size(-2) != g.size[1] || v.size(-3) != g.size[2])
    throw Error(path, "tensor shape " + c10::str(v.sizes()) + " does not match the geometry (" +
                          g.describe() + ")");
  const at::Tensor voxels = v.to(at::kCPU).contiguous();  // a no-op for the usual case
  const bool compress = ext != ".nii";  // .nii.gz compresses by its name anyway

  const auto write_one = [&](const std::string& tmp) {
    try {
      if (ext != ".mhd") return write_by_dtype(voxels, g, tmp, compress);
      // A .mhd header names its data file; write both into a private folder
      // under their final names, move the data file next to the target, and
      // let write_atomically rename the header last.
      const fs::path final_path(path);
      const fs::path staging = fs::path(tmp).replace_extension(".d");
      fs::create_directory(staging);
      try {
        const fs::path staged_header = staging / final_path.filename();
        write_by_dtype(voxels, g, staged_header.string(), compress);
        for (const auto& entry : fs::directory_iterator(staging))
          if (entry.path() != staged_header)
            fs::rename(entry.path(), final_path.parent_path().empty()
                                         ? entry.path().filename()
                                         : final_path.parent_path() / entry.path().filename());
        fs::rename(staged_header, tmp);
        fs::remove_all(staging);
      } catch (...) {
        std::error_code ec;
        fs::remove_all(staging, ec);
        throw;
      }
    } catch (const itk::ExceptionObject& e) {
      throw Error(path, "cannot write the image: " + detail::short_reason(e));
    }
  };
  try {
    write_atomically(path, write_one);
  } catch (const fs::filesystem_error& e) {
    throw Error(path, std::string("cannot write the image: ") + e.what());
  }
}

}  // namespace iris::io
