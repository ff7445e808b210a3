#pragma once
// Every difference between LibTorch 1.13 (Debian) and 2.x (CUDA wheels) lives
// here, so the rest of the code is written once.
#include <ATen/ATen.h>
#include <torch/version.h>

#define IRIS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace iris::compat {

// softmax(q kᵀ / sqrt(d)) v for [B, H, L, D] tensors. 2.x has a fused kernel
// (flash / memory-efficient attention on CUDA); 1.13 gets the plain maths.
inline at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v) {
#if IRIS_TORCH_AT_LEAST(2, 0)
  return at::scaled_dot_product_attention(q, k, v);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-2, -1)) * scale, -1), v);
#endif
}

inline bool cuda_available() {
#ifdef IRIS_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace iris::compat

#ifdef IRIS_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace iris::compat {

// Peak bytes allocated on a CUDA device since the last reset (0 without CUDA).
inline long long cuda_peak_allocated_bytes(int device) {
#ifdef IRIS_HAVE_CUDA
  // Index 0 is the aggregate pool in both 1.13 and 2.x.
  return c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].peak;
#else
  (void)device;
  return 0;
#endif
}

inline void cuda_reset_peak(int device) {
#ifdef IRIS_HAVE_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);
#else
  (void)device;
#endif
}

}  // namespace iris::compat
