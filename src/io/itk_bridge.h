#pragma once
// Private to src/io: the glue between ITK images and iris::io::Image. Not
// installed and never included outside src/io, so ITK stays out of the API.
#include <string>

#include <itkMacro.h>
#include <itkImage.h>
#include <torch/types.h>

#include "iris/common/image.h"
#include "image_checks.h"

namespace iris::io::detail {

template <typename Pixel> constexpr at::ScalarType torch_dtype_of();
template <> constexpr at::ScalarType torch_dtype_of<float>() { return at::kFloat; }
template <> constexpr at::ScalarType torch_dtype_of<double>() { return at::kDouble; }
template <> constexpr at::ScalarType torch_dtype_of<int32_t>() { return at::kInt; }
template <> constexpr at::ScalarType torch_dtype_of<int16_t>() { return at::kShort; }
template <> constexpr at::ScalarType torch_dtype_of<uint8_t>() { return at::kByte; }

Geometry geometry_of(const itk::ImageBase<3>& image);
// The inverse: gives `image` the grid `g` (largest region, spacing, origin,
// direction) without allocating pixels.
void set_geometry(itk::ImageBase<3>& image, const Geometry& g);

// An ITK view of a contiguous [Z, Y, X] tensor on grid `g` (no copy: the
// tensor must outlive the image).
template <typename Pixel>
typename itk::Image<Pixel, 3>::Pointer wrap_tensor(const at::Tensor& voxels, const Geometry& g) {
  auto image = itk::Image<Pixel, 3>::New();
  set_geometry(*image, g);
  image->GetPixelContainer()->SetImportPointer(const_cast<Pixel*>(voxels.data_ptr<Pixel>()),
                                               static_cast<itk::SizeValueType>(voxels.numel()), false);
  return image;
}

// Wraps the ITK buffer without copying: the tensor's deleter holds the ITK
// image alive for as long as the tensor (or a view of it) lives.
template <typename Pixel>
Image image_from_itk(const typename itk::Image<Pixel, 3>::Pointer& itk_image,
                     const std::string& source) {
  Image out;
  out.geometry = geometry_of(*itk_image);
  out.source = source;
  const auto& g = out.geometry;
  typename itk::Image<Pixel, 3>::Pointer keep_alive = itk_image;
  out.voxels = torch::from_blob(
      itk_image->GetBufferPointer(), {g.size[2], g.size[1], g.size[0]},
      [keep_alive](void*) mutable { keep_alive = nullptr; },
      torch::TensorOptions().dtype(torch_dtype_of<Pixel>()));
  return out;
}

// ITK's message without its "itk::ERROR: Class(0x...):" preamble, on one line.
std::string short_reason(const itk::ExceptionObject& e);

}  // namespace iris::io::detail
