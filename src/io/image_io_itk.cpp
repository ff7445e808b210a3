// NRRD and MetaImage through ITK, and the ITK glue of itk_bridge.h (ITK build only).
#include <filesystem>

#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOFactory.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "image_checks.h"
#include "itk_bridge.h"
#include "nifti.h"

namespace fs = std::filesystem;

namespace iris::io::detail {

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

namespace {

std::string join_sizes(const std::vector<size_t>& sizes) {
  std::string s;
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "x" : "") + std::to_string(sizes[i]);
  return s;
}

// Opens the file's header and checks it holds one scalar 3-D volume.
itk::ImageIOBase::Pointer open_3d_image(const std::string& path) {
  itk::ImageIOBase::Pointer io = itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::IOFileModeEnum::ReadMode);
  if (!io)
    throw Error(path, "is not an image iris can read (no NIfTI, NRRD or MetaImage header found;"
                      " is the file damaged or misnamed?)");
  io->SetFileName(path);
  try {
    io->ReadImageInformation();
  } catch (const itk::ExceptionObject& e) {
    throw Error(path, "cannot read the image header: " + short_reason(e));
  }
  std::vector<size_t> sizes;
  for (unsigned d = 0; d < io->GetNumberOfDimensions(); ++d) sizes.push_back(io->GetDimensions(d));
  // Trailing axes of length 1 carry no data, so such a file is still a 3-D volume.
  while (sizes.size() > 3 && sizes.back() == 1) sizes.pop_back();
  if (sizes.size() != 3)
    throw Error(path, "is " + std::to_string(sizes.size()) + "-D (" + join_sizes(sizes) + "); a 3-D image is needed");
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
    throw Error(path, "cannot read the voxels: " + short_reason(e));
  }
  typename ItkImage::Pointer image = reader->GetOutput();
  image->DisconnectPipeline();  // the reader may go; the image stays
  return image_from_itk<Pixel>(image, path);
}

bool fits_int32_exactly(itk::IOComponentEnum c) {
  using C = itk::IOComponentEnum;
  return c == C::UCHAR || c == C::CHAR || c == C::USHORT || c == C::SHORT || c == C::INT;
}

// Wraps the tensor's memory as an ITK image (no copy) and writes it. For a
// 4-D tensor [C,Z,Y,X] the 4th ITK axis is the component, spacing 1.
template <typename Pixel, unsigned Dim>
void write_itk(const at::Tensor& voxels, const Geometry& g, const std::string& file) {
  using ItkImage = itk::Image<Pixel, Dim>;
  auto image = ItkImage::New();
  typename ItkImage::SizeType size;
  typename ItkImage::SpacingType spacing;
  typename ItkImage::PointType origin;
  typename ItkImage::DirectionType direction;
  direction.SetIdentity();
  for (unsigned i = 0; i < Dim; ++i) {
    size[i] = i < 3 ? static_cast<itk::SizeValueType>(g.size[i]) : static_cast<itk::SizeValueType>(voxels.size(0));
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
                                               static_cast<itk::SizeValueType>(voxels.numel()), false);
  auto writer = itk::ImageFileWriter<ItkImage>::New();
  writer->SetFileName(file);
  writer->SetInput(image);
  writer->SetUseCompression(true);
  writer->Update();
}

template <typename Pixel>
void write_any_dim(const at::Tensor& voxels, const Geometry& g, const std::string& file) {
  if (voxels.dim() == 3) write_itk<Pixel, 3>(voxels, g, file);
  else write_itk<Pixel, 4>(voxels, g, file);
}

void write_by_dtype(const at::Tensor& voxels, const Geometry& g, const std::string& file, const std::string& path) {
  switch (voxels.scalar_type()) {
    case at::kByte: return write_any_dim<uint8_t>(voxels, g, file);
    case at::kShort: return write_any_dim<int16_t>(voxels, g, file);
    case at::kInt: return write_any_dim<int32_t>(voxels, g, file);
    case at::kFloat: return write_any_dim<float>(voxels, g, file);
    default: break;
  }
  throw Error(path, std::string("cannot write voxels of dtype ") + c10::toString(voxels.scalar_type()) +
                        " (uint8, int16, int32 or float32 are supported)");
}

}  // namespace

Image read_with_itk(const std::string& path, bool as_labels) {
  // ITK 5.2 reads a cut-off .gz without complaint, padding with garbage.
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) check_gzip_complete(path);
  auto io = open_3d_image(path);
  // Small integer types convert to int32 exactly, straight from the file;
  // anything else goes through double and is checked by the caller.
  if (as_labels) return fits_int32_exactly(io->GetComponentType()) ? read_as<int32_t>(io, path) : read_as<double>(io, path);
  return read_as<float>(io, path);
}

void write_with_itk(const at::Tensor& voxels, const Geometry& g, const std::string& path) {
  const bool mhd = full_extension(path) == ".mhd";
  const auto write_one = [&](const std::string& tmp) {
    try {
      if (!mhd) return write_by_dtype(voxels, g, tmp, path);
      // A .mhd header names its data file; write both into a private folder
      // under their final names, move the data file next to the target, and
      // let write_atomically rename the header last.
      const fs::path final_path(path);
      const fs::path staging = fs::path(tmp).replace_extension(".d");
      fs::create_directory(staging);
      try {
        const fs::path staged_header = staging / final_path.filename();
        write_by_dtype(voxels, g, staged_header.string(), path);
        for (const auto& entry : fs::directory_iterator(staging))
          if (entry.path() != staged_header)
            fs::rename(entry.path(), final_path.parent_path().empty() ? entry.path().filename()
                                                                      : final_path.parent_path() / entry.path().filename());
        fs::rename(staged_header, tmp);
        fs::remove_all(staging);
      } catch (...) {
        std::error_code ec;
        fs::remove_all(staging, ec);
        throw;
      }
    } catch (const itk::ExceptionObject& e) {
      throw Error(path, "cannot write the image: " + short_reason(e));
    }
  };
  write_atomically(path, write_one);
}

}  // namespace iris::io::detail
