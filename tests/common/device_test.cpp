// Which device a process computes on, from the job's environment: the rule
// every rank of torchrun or srun follows (and iris-infer --device cuda).
#include <cstdlib>

#include <gtest/gtest.h>

#include "iris/common/device.h"
#include "support/test_support.h"

using iris::DistributedEnv;
using iris::resolve_device;
using iris::testing::error_of;

namespace {
// Sets variables for one test and restores the environment after it.
class Environment {
 public:
  Environment(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const char* name : kAll) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v ? std::optional<std::string>(v) : std::nullopt);
      ::unsetenv(name);
    }
    for (const auto& [k, v] : vars) ::setenv(k, v, 1);
  }
  ~Environment() {
    for (const auto& [k, v] : saved_) {
      if (v) ::setenv(k.c_str(), v->c_str(), 1);
      else ::unsetenv(k.c_str());
    }
  }

 private:
  static constexpr const char* kAll[] = {"RANK",          "WORLD_SIZE",   "LOCAL_RANK",           "LOCAL_WORLD_SIZE",
                                         "SLURM_PROCID",  "SLURM_NTASKS", "SLURM_LOCALID",        "SLURM_NTASKS_PER_NODE",
                                         "SLURM_TASKS_PER_NODE", "MASTER_ADDR", "MASTER_PORT"};
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};
}  // namespace

TEST(Device, TorchrunRanksTakeTheirLocalGpu) {
  Environment env({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                   {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "23456"}});
  const DistributedEnv e = DistributedEnv::from_environment();
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "node7");
  EXPECT_EQ(e.master_port, 23456);
  EXPECT_EQ(resolve_device("cuda", e, 2, "train.device"), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(resolve_device("cpu", e, 2, "train.device"), c10::Device(c10::kCPU));
  // Every rank on GPU 0 is refused, naming the key.
  const std::string msg = error_of([&] { resolve_device("cuda:0", e, 2, "train.device"); });
  EXPECT_NE(msg.find("train.device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("use 'cuda'"), std::string::npos) << msg;
}

TEST(Device, SrunRanksTakeTheirLocalIdGpu) {
  Environment env({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "2(x2)"}});
  const DistributedEnv e = DistributedEnv::from_environment();
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(resolve_device("cuda", e, 2, "--device"), c10::Device(c10::kCUDA, 0));
  EXPECT_NE(error_of([&] { resolve_device("cuda:1", e, 2, "--device"); }).find("--device"), std::string::npos);
}

TEST(Device, OneProcessMayNameItsGpu) {
  Environment env({});
  const DistributedEnv e = DistributedEnv::from_environment();
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.local_world_size, 1);
  EXPECT_EQ(resolve_device("cuda:1", e, 2, "--device"), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(resolve_device("cuda", e, 1, "--device"), c10::Device(c10::kCUDA, 0));
  EXPECT_NE(error_of([&] { resolve_device("cuda:2", e, 2, "--device"); }).find("sees 2"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve_device("cuda", e, 0, "--device"); }).find("--device"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve_device("gpu", e, 1, "--device"); }).find("unknown device 'gpu'"), std::string::npos);
}

TEST(Device, MalformedVariablesAreNamed) {
  {
    Environment env({{"LOCAL_RANK", "one"}});
    EXPECT_NE(error_of([] { DistributedEnv::from_environment(); }).find("LOCAL_RANK"), std::string::npos);
  }
  {
    Environment env({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
    EXPECT_NE(error_of([] { DistributedEnv::from_environment(); }).find("outside world size"), std::string::npos);
  }
}
