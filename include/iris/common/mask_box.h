#pragma once
// The bounding box of a mask's non-zero voxels: one implementation for the
// reference crop, the reference window and the training episode crops.
#include <array>
#include <optional>

#include <ATen/Tensor.h>

namespace iris {

struct MaskBox {
  std::array<long, 3> lo{}, hi{};  // inclusive, per axis of a [Z, Y, X] mask
  std::array<double, 3> centre() const {
    return {(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, (lo[2] + hi[2]) / 2.0};
  }
  long extent(int axis) const { return hi[axis] - lo[axis] + 1; }
};

// The box of the non-zero voxels of a 3-D mask, or nothing when it has none.
std::optional<MaskBox> mask_box(const at::Tensor& mask);

}  // namespace iris
