// ITK's resampler (B-spline for iris; nearest and linear for the tests that
// hold iris' own against it) and N4 (ITK build only).
#include <itkBSplineControlPointImageFilter.h>
#include <itkBSplineInterpolateImageFunction.h>
#include <itkImageRegionConstIterator.h>
#include <itkLinearInterpolateImageFunction.h>
#include <itkN4BiasFieldCorrectionImageFilter.h>
#include <itkNearestNeighborInterpolateImageFunction.h>
#include <itkResampleImageFilter.h>
#include <itkShrinkImageFilter.h>
#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"
#include "itk_bridge.h"
#include "resample_detail.h"

namespace iris::io {

namespace detail {

namespace {
template <typename Pixel>
at::Tensor resample_itk(const at::Tensor& input, const Geometry& from, const Geometry& onto,
                        Interpolation interpolation) {
  using ItkImage = itk::Image<Pixel, 3>;
  auto image = wrap_tensor<Pixel>(input, from);
  auto filter = itk::ResampleImageFilter<ItkImage, ItkImage, double>::New();
  filter->SetInput(image);
  switch (interpolation) {
    case Interpolation::kNearest:
      filter->SetInterpolator(itk::NearestNeighborInterpolateImageFunction<ItkImage, double>::New());
      break;
    case Interpolation::kLinear:
      filter->SetInterpolator(itk::LinearInterpolateImageFunction<ItkImage, double>::New());
      break;
    case Interpolation::kBSpline: {
      auto bspline = itk::BSplineInterpolateImageFunction<ItkImage, double, double>::New();
      bspline->SetSplineOrder(3);
      filter->SetInterpolator(bspline);
      break;
    }
    case Interpolation::kPerLabelLinear:
      internal_error("resample_voxels", "per-label-linear is handled per label");
  }
  auto grid = ItkImage::New();  // geometry only, no pixels
  set_geometry(*grid, onto);
  filter->SetOutputParametersFromImage(grid);
  filter->SetDefaultPixelValue(0);
  try {
    filter->Update();
  } catch (const itk::ExceptionObject& e) {
    throw Error("resample_voxels", "ITK resampling failed: " + short_reason(e));
  }
  typename ItkImage::Pointer out = filter->GetOutput();
  out->DisconnectPipeline();
  return image_from_itk<Pixel>(out, "").voxels;
}
}  // namespace

at::Tensor resample_with_itk(const at::Tensor& voxels, const Geometry& from, const Geometry& onto,
                             Interpolation interpolation) {
  if (voxels.scalar_type() == at::kInt) return resample_itk<int32_t>(voxels, from, onto, interpolation);
  return resample_itk<float>(voxels, from, onto, interpolation);
}

at::Tensor resample_bspline(const at::Tensor& voxels, const Geometry& from, const Geometry& onto) {
  return resample_with_itk(voxels, from, onto, Interpolation::kBSpline);
}

}  // namespace detail

// ------------------------------------------------------------ N4

at::Tensor n4_bias_correct(const at::Tensor& volume, const Geometry& g, const N4Options& o) {
  if (volume.dim() != 3) throw Error("n4", "expects a [Z,Y,X] volume");
  if (o.shrink_factor < 1) throw Error("preprocess.n4_shrink", "must be at least 1");
  using Float = itk::Image<float, 3>;
  using Mask = itk::Image<uint8_t, 3>;
  using N4 = itk::N4BiasFieldCorrectionImageFilter<Float, Mask, Float>;

  const at::Tensor input = volume.to(at::kFloat).clamp_min(0).contiguous();
  const double threshold = detail::percentile_of(input, o.mask_percentile);
  at::Tensor mask = (input > threshold).to(at::kByte).contiguous();
  if (!mask.any().item<bool>()) return input;  // nothing to fit on

  auto image = detail::wrap_tensor<float>(input, g);
  auto mask_image = detail::wrap_tensor<uint8_t>(mask, g);
  auto shrink_image = itk::ShrinkImageFilter<Float, Float>::New();
  shrink_image->SetInput(image);
  shrink_image->SetShrinkFactors(static_cast<unsigned>(o.shrink_factor));
  auto shrink_mask = itk::ShrinkImageFilter<Mask, Mask>::New();
  shrink_mask->SetInput(mask_image);
  shrink_mask->SetShrinkFactors(static_cast<unsigned>(o.shrink_factor));

  auto n4 = N4::New();
  n4->SetInput(shrink_image->GetOutput());
  n4->SetMaskImage(shrink_mask->GetOutput());
  typename N4::VariableSizeArrayType iterations(3);
  for (unsigned i = 0; i < 3; ++i) iterations[i] = static_cast<unsigned>(o.iterations[i]);
  n4->SetMaximumNumberOfIterations(iterations);
  n4->SetNumberOfFittingLevels(3);

  // The fitted field is a B-spline lattice over physical space: evaluate it
  // on the full-resolution grid, so only the fit sees the shrunk image.
  using Lattice = N4::BiasFieldControlPointLatticeType;
  using Field = N4::ScalarImageType;
  auto field = itk::BSplineControlPointImageFilter<Lattice, Field>::New();
  try {
    n4->Update();
    field->SetInput(n4->GetLogBiasFieldControlPointLattice());
    field->SetSplineOrder(n4->GetSplineOrder());
    field->SetSize(image->GetLargestPossibleRegion().GetSize());
    field->SetOrigin(image->GetOrigin());
    field->SetSpacing(image->GetSpacing());
    field->SetDirection(image->GetDirection());
    field->Update();
  } catch (const itk::ExceptionObject& e) {
    throw Error("n4", "N4 bias-field correction failed: " + detail::short_reason(e));
  }
  at::Tensor log_field = at::empty_like(input);
  float* out = log_field.data_ptr<float>();
  itk::ImageRegionConstIterator<Field> it(field->GetOutput(), field->GetOutput()->GetLargestPossibleRegion());
  for (it.GoToBegin(); !it.IsAtEnd(); ++it) *out++ = static_cast<float>(it.Get()[0]);
  return input / log_field.exp();
}

}  // namespace iris::io
