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
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
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

// Makes `device` the current CUDA device of this thread (NCCL's default).
inline void cuda_set_device(int device) {
#ifdef IRIS_HAVE_CUDA
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
#else
  (void)device;
#endif
}

// Returns cached, unused blocks to the driver (between probing sizes).
inline void cuda_empty_cache() {
#ifdef IRIS_HAVE_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

// Total memory of a CUDA device in bytes (0 without CUDA).
inline long long cuda_total_memory(int device) {
#ifdef IRIS_HAVE_CUDA
  return static_cast<long long>(at::cuda::getDeviceProperties(device)->totalGlobalMem);
#else
  (void)device;
  return 0;
#endif
}

}  // namespace iris::compat

#include <ATen/autocast_mode.h>

namespace iris::compat {

// Mixed precision for the ops run while it lives, on one device type (CUDA
// or CPU), like Python's `with torch.autocast(device, dtype)`. 2.4 replaced
// the per-device functions of 1.13 with ones taking a device type.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, at::ScalarType dtype, bool enabled) : device_(device), active_(enabled) {
    if (!active_) return;
    previous_enabled_ = is_enabled(device_);
    previous_dtype_ = get_dtype(device_);
    set_dtype(device_, dtype);
    set_enabled(device_, true);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    // Leaving the outermost region drops the cast-weight cache.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_enabled(device_, previous_enabled_);
    set_dtype(device_, previous_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

  // The current state of one device type (e.g. to replay it later).
#if IRIS_TORCH_AT_LEAST(2, 4)
  static bool is_enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
  static at::ScalarType get_dtype(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }

 private:
  static void set_enabled(c10::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
  static void set_dtype(c10::DeviceType d, at::ScalarType t) { at::autocast::set_autocast_dtype(d, t); }
#else
  static bool is_enabled(c10::DeviceType d) {
    return d == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
  }
  static at::ScalarType get_dtype(c10::DeviceType d) {
    return d == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
  }

 private:
  static void set_enabled(c10::DeviceType d, bool on) {
    if (d == c10::DeviceType::CUDA) at::autocast::set_enabled(on);
    else at::autocast::set_cpu_enabled(on);
  }
  static void set_dtype(c10::DeviceType d, at::ScalarType t) {
    if (d == c10::DeviceType::CUDA) at::autocast::set_autocast_gpu_dtype(t);
    else at::autocast::set_autocast_cpu_dtype(t);
  }
#endif
  c10::DeviceType device_;
  bool active_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace iris::compat

namespace iris::compat {

// A torch::nn::LayerNorm applied with its input in the weights' dtype. CUDA
// autocast runs layer_norm in float32 by itself; CPU autocast in 1.13 passes
// bf16 activations on, and the CPU kernel refuses mixed dtypes.
template <typename LayerNormHolder>
at::Tensor layer_norm(LayerNormHolder& norm, const at::Tensor& x) {
  const auto dtype = norm->weight.defined() ? norm->weight.scalar_type() : at::kFloat;
  return norm->forward(x.scalar_type() == dtype ? x : x.to(dtype));
}

}  // namespace iris::compat
