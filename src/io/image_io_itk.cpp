// NRRD and MetaImage through ITK, and the ITK glue of itk_bridge.h (ITK build only).
#include <cstdint>
#include <sstream>
#include <fstream>
#include <cctype>
#include <algorithm>
#include <filesystem>

#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOFactory.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/text.h"
#include "image_checks.h"
#include "itk_bridge.h"
#include "toolkit_messages.h"
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

// The voxel data a NRRD or MetaImage header points at: its file, where the
// data starts in it, and whether it is compressed. `found` is false for
// layouts not checked here (file lists, slice patterns).
struct DataFile {
  bool found = false;
  std::string file;
  uint64_t offset = 0;
  bool compressed = false;
  uint64_t voxel_bytes = 0;  // what the header announces (0: not understood)
};

// Bytes per voxel of a NRRD "type:" or a MetaImage "ElementType" (0: unknown).
uint64_t type_bytes(const std::string& type) {
  const std::string t = type;
  auto has = [&](const char* s) { return t.find(s) != std::string::npos; };
  if (has("double") || has("64") || has("longlong") || has("long long") || has("long_long")) return 8;
  if (has("long")) return 0;  // 4 or 8 bytes by platform: not checked
  if (has("16") || has("short")) return 2;
  if (has("int8") || has("char")) return 1;
  if (has("float") || has("32") || has("int")) return 4;
  return 0;
}

// a * b, saturating at 2^62 (a header's claim, not a size to allocate).
uint64_t times(uint64_t a, uint64_t b) {
  const uint64_t cap = uint64_t{1} << 62;
  return (a != 0 && b > cap / a) ? cap : std::min(cap, a * b);
}

// The product of the whole numbers of `text` ("1000 1000 1000").
uint64_t product_of(const std::string& text) {
  std::istringstream in(text);
  uint64_t total = 1;
  long long v = 0;
  bool any = false;
  while (in >> v) {
    if (v < 0) return 0;
    if (v != 0 && total > (uint64_t{1} << 62) / static_cast<uint64_t>(v)) return uint64_t{1} << 62;
    total *= static_cast<uint64_t>(v);
    any = true;
  }
  return any ? total : 0;
}

DataFile data_file_of(const std::string& path) {
  DataFile d;
  std::ifstream in(path, std::ios::binary);
  const bool nrrd = to_lower(fs::path(path).extension().string()) == ".nrrd" || to_lower(fs::path(path).extension().string()) == ".nhdr";
  std::string line;
  uint64_t consumed = 0;
  std::string detached;
  uint64_t voxels = 0, bytes_per_voxel = 0, channels = 1;
  for (int n = 0; n < 4096 && std::getline(in, line); ++n) {
    consumed += line.size() + 1;
    const std::string l = to_lower(trim(line));
    if (nrrd) {
      if (l.empty()) {  // the blank line ends an attached header
        if (!detached.empty()) break;
        return {true, path, consumed, d.compressed, times(voxels, bytes_per_voxel)};
      }
      if (l.rfind("sizes:", 0) == 0) voxels = product_of(l.substr(6));
      if (l.rfind("type:", 0) == 0) bytes_per_voxel = type_bytes(trim(l.substr(5)));
      if (l.rfind("encoding:", 0) == 0) {
        const std::string e = trim(l.substr(9));
        d.compressed = e != "raw";  // gzip, bzip2: compressed; ascii/text/hex: longer than raw
      }
      for (const char* key : {"data file:", "datafile:"})
        if (l.rfind(key, 0) == 0) detached = trim(trim(line).substr(std::string(key).size()));
    } else {
      const auto eq = l.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = trim(l.substr(0, eq)), value = trim(trim(line).substr(eq + 1));
      if (key == "compresseddata") d.compressed = to_lower(value) == "true";
      if (key == "binarydata" && to_lower(value) == "false") return {};  // ASCII voxels: no byte count to hold
      if (key == "dimsize") voxels = product_of(value);
      if (key == "elementtype") bytes_per_voxel = type_bytes(to_lower(value).substr(to_lower(value).rfind("met_", 0) == 0 ? 4 : 0));
      if (key == "elementnumberofchannels") channels = std::max<uint64_t>(1, product_of(value));
      if (key == "elementdatafile") {  // the last header line
        if (to_lower(value) == "local") return {true, path, consumed, d.compressed, times(times(voxels, bytes_per_voxel), channels)};
        detached = value;
        break;
      }
    }
  }
  if (detached.empty() || to_lower(detached).rfind("list", 0) == 0 || detached.find('%') != std::string::npos ||
      detached.find(' ') != std::string::npos)
    return {};
  const fs::path file = fs::path(detached).is_absolute() ? fs::path(detached) : fs::path(path).parent_path() / detached;
  return {true, file.string(), 0, d.compressed, times(times(voxels, bytes_per_voxel), channels)};
}

// Every voxel the header announces must be in the file before anything is
// allocated: an uncompressed file must hold them all (ITK reads a cut file
// with a warning), and a compressed one cannot hold more than deflate's
// limit of about 1032:1 (a tiny file claiming 1000^3 voxels would take GBs
// before ITK noticed). ASCII encodings are at least as long as raw.
// Run on the header text before ITK reads it (ITK's NRRD reader allocates
// the announced size while it reads the header).
void check_voxel_bytes(const std::string& path) {
  const DataFile d = data_file_of(path);
  if (!d.found || d.voxel_bytes == 0) return;
  std::error_code ec;
  const uint64_t size = fs::file_size(d.file, ec);
  if (ec) throw Error(path, "its voxel data file " + d.file + " cannot be read: " + ec.message());
  const uint64_t held = size > d.offset ? size - d.offset : 0;
  const uint64_t needed = d.voxel_bytes;
  auto mb = [](uint64_t b) { return std::to_string(b / (1024 * 1024)) + " MB"; };
  if (!d.compressed && held < needed)
    throw Error(path, "is cut short (truncated): its header announces " + std::to_string(needed) +
                          " bytes of voxels, " + d.file + " holds " + std::to_string(held));
  if (d.compressed && needed / 1100 > held + 4096)
    throw Error(path, "announces " + mb(needed) + " of voxels in " + std::to_string(held) +
                          " compressed bytes, more than compression can hold: the header is damaged");
}

// Opens the file's header and checks it holds one scalar 3-D volume.
itk::ImageIOBase::Pointer open_3d_image(const std::string& path) {
  itk::ImageIOBase::Pointer io = itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::IOFileModeEnum::ReadMode);
  if (!io)
    throw Error(path, "is not an image iris can read (no NIfTI, NRRD or MetaImage header found;"
                      " is the file damaged or misnamed?)");
  io->SetFileName(path);
  check_voxel_bytes(path);
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
  const ToolkitMessages messages;
  auto io = open_3d_image(path);
  // Small integer types convert to int32 exactly, straight from the file;
  // anything else goes through double and is checked by the caller.
  Image image = !as_labels                               ? read_as<float>(io, path)
                : fits_int32_exactly(io->GetComponentType()) ? read_as<int32_t>(io, path)
                                                             : read_as<double>(io, path);
  const std::string noise = messages.summary(path);
  if (!noise.empty()) image.warnings.push_back(noise);
  return image;
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
