#pragma once
// What LibTorch's C++ API lacks and iris needs in several places: CUDA
// queries that compile to nothing without CUDA, and an autocast guard (C++
// has only the per-device-type functions, 2.4 and newer).
#include <ATen/ATen.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 4)
#error "iris needs LibTorch 2.4 or newer (README: LibTorch)"
#endif

namespace iris::compat {

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
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
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

// Memory the driver reports free on a CUDA device, in bytes (0 without CUDA).
// The caching allocator's cached blocks count as used.
inline long long cuda_free_memory(int device) {
#ifdef IRIS_HAVE_CUDA
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return static_cast<long long>(free);
#else
  (void)device;
  return 0;
#endif
}

}  // namespace iris::compat

#include <ATen/autocast_mode.h>

namespace iris::compat {

// Mixed precision for the ops run while it lives, on one device type (CUDA
// or CPU), like Python's `with torch.autocast(device, dtype)`.
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
  static bool is_enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
  static at::ScalarType get_dtype(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }

 private:
  static void set_enabled(c10::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
  static void set_dtype(c10::DeviceType d, at::ScalarType t) { at::autocast::set_autocast_dtype(d, t); }
  c10::DeviceType device_;
  bool active_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace iris::compat

namespace iris::compat {

// PyTorch 2.15's oneDNN kernel for a CPU bf16 3x3x3 convolution returns a
// wrong weight gradient (relative error about 1) where the input is 2 voxels
// wide and has 24 or more channels: the deepest encoder stage at a 32^3
// patch. True where a convolution of `kernel` on `x` would hit it under CPU
// bf16 autocast; the caller then runs it in float32, with or without
// gradients, so that a checkpointed segment's recomputation (under grad)
// equals its forward (under no-grad). tests/model/checkpointing_test.cpp
// catches it on the tiny model.
inline bool cpu_bf16_conv_weight_grad_is_wrong(const at::Tensor& x, int64_t kernel) {
  if (kernel != 3 || !x.device().is_cpu() || x.dim() != 5) return false;
  if (!(x.scalar_type() == at::kBFloat16 || (at::autocast::is_autocast_enabled(c10::DeviceType::CPU) &&
                                             at::autocast::get_autocast_dtype(c10::DeviceType::CPU) == at::kBFloat16)))
    return false;
  return x.size(2) <= 2 || x.size(3) <= 2 || x.size(4) <= 2;
}

// Autocast off on one device type while it lives (the ops run in their
// inputs' dtypes), then back as it was.
class AutocastOff {
 public:
  explicit AutocastOff(c10::DeviceType device) : device_(device), was_(at::autocast::is_autocast_enabled(device)) {
    at::autocast::set_autocast_enabled(device_, false);
  }
  ~AutocastOff() { at::autocast::set_autocast_enabled(device_, was_); }
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  c10::DeviceType device_;
  bool was_;
};

// A torch::nn::LayerNorm applied with its input in the weights' dtype. CUDA
// autocast runs layer_norm in float32 by itself; CPU autocast in 1.13 passes
// bf16 activations on, and the CPU kernel refuses mixed dtypes.
template <typename LayerNormHolder>
at::Tensor layer_norm(LayerNormHolder& norm, const at::Tensor& x) {
  const auto dtype = norm->weight.defined() ? norm->weight.scalar_type() : at::kFloat;
  return norm->forward(x.scalar_type() == dtype ? x : x.to(dtype));
}

}  // namespace iris::compat
