#include "iris/common/device.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <thread>

#include <ATen/Parallel.h>

#include "iris/common/compat.h"
#ifdef IRIS_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif
#include "iris/common/error.h"
#include "iris/common/setting_error.h"

namespace iris {

namespace {

// The first of `names` that is set, as a number in [min, max]; `fallback` when none is.
int env_int(std::initializer_list<const char*> names, int fallback, int min, int max) {
  for (const char* name : names) {
    const char* v = std::getenv(name);
    if (!v) continue;
    errno = 0;
    char* end = nullptr;
    const long value = std::strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || value < min || value > max)
      throw Error(name, std::string("is '") + v + "', expected a whole number from " + std::to_string(min) + " to " +
                            std::to_string(max));
    return static_cast<int>(value);
  }
  return fallback;
}

// SLURM_TASKS_PER_NODE looks like "2(x3),1": the count for the first node is enough
// to know whether this node runs several ranks when SLURM_NTASKS_PER_NODE is unset.
int slurm_tasks_per_node() {
  const char* v = std::getenv("SLURM_TASKS_PER_NODE");
  if (!v) return 0;
  std::cmatch m;
  static const std::regex first(R"(^([0-9]+))");
  if (!std::regex_search(v, m, first)) return 0;
  return std::atoi(m[1].str().c_str());
}

}  // namespace

DistributedEnv DistributedEnv::from_environment() {
  DistributedEnv e;
  constexpr int kMax = 1 << 20;
  e.world_size = env_int({"WORLD_SIZE", "SLURM_NTASKS"}, 1, 1, kMax);
  e.rank = env_int({"RANK", "SLURM_PROCID"}, 0, 0, kMax);
  e.local_rank = env_int({"LOCAL_RANK", "SLURM_LOCALID"}, 0, 0, kMax);
  e.local_world_size = env_int({"LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"}, 0, 1, kMax);
  if (e.local_world_size == 0) e.local_world_size = std::max({1, slurm_tasks_per_node(), e.local_rank + 1});
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  e.master_port = env_int({"MASTER_PORT"}, 29500, 1, 65535);
  if (e.rank >= e.world_size)
    throw Error(std::getenv("RANK") ? "RANK" : "SLURM_PROCID",
                "rank " + std::to_string(e.rank) + " is outside world size " + std::to_string(e.world_size));
  if (e.local_rank >= e.local_world_size) e.local_world_size = e.local_rank + 1;
  return e;
}

c10::Device resolve_device(const std::string& requested, const DistributedEnv& env, int cuda_devices,
                           const std::string& where) {
  if (requested == "cpu") return c10::Device(c10::kCPU);
  static const std::regex cuda(R"(^cuda(:([0-9]+))?$)");
  std::smatch m;
  if (!std::regex_match(requested, m, cuda))
    throw_at_origin(where, "unknown device '" + requested + "' (use cpu, cuda, or cuda:N)");
  if (cuda_devices <= 0)
    throw_at_origin(where, "'" + requested + "' asked for, but " +
                           std::string(compat::cuda_available() ? "this machine has no visible GPU"
                                                                : "this build has no CUDA (build against a CUDA LibTorch)"));
  int index = env.local_rank;
  if (m[1].matched) {
    index = std::atoi(m[2].str().c_str());
    if (env.local_world_size > 1)
      throw_at_origin(where, "'" + requested + "' with " + std::to_string(env.local_world_size) +
                             " ranks on this node would put them all on one GPU: use 'cuda' (rank r takes "
                             "cuda:LOCAL_RANK)");
  }
  if (index >= cuda_devices)
    throw_at_origin(where, "'" + requested + "' needs GPU " + std::to_string(index) + " but this process sees " +
                           std::to_string(cuda_devices) + " (check CUDA_VISIBLE_DEVICES and --gres)");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void configure_threads(int requested) {
  int n = requested;
  if (n <= 0)
    if (const char* env = std::getenv("IRIS_THREADS")) n = std::atoi(env);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, n));
}

long long peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

int visible_cuda_devices() {
#ifdef IRIS_HAVE_CUDA
  return static_cast<int>(c10::cuda::device_count());
#else
  return 0;
#endif
}

}  // namespace iris
