#include "iris/common/mask_box.h"

#include <ATen/ATen.h>

#include "iris/common/internal_error.h"

namespace iris {

std::optional<MaskBox> mask_box(const at::Tensor& mask) {
  if (mask.dim() != 3) internal_error("mask_box", "expects a 3-D mask [Z, Y, X]");
  const at::Tensor m = mask.ne(0);
  // One profile per axis (any over the other two), then its first and last
  // set entries: no list of every non-zero voxel.
  const std::array<at::Tensor, 3> profiles{m.any(2).any(1), m.any(2).any(0), m.any(1).any(0)};
  if (!profiles[0].any().item<bool>()) return std::nullopt;
  MaskBox box;
  for (int a = 0; a < 3; ++a) {
    const at::Tensor idx = at::nonzero(profiles[a].to(at::kCPU)).reshape({-1});
    box.lo[a] = idx[0].item<long>();
    box.hi[a] = idx[-1].item<long>();
  }
  return box;
}

}  // namespace iris
