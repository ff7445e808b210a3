// The sbatch scripts as SLURM runs them: a spooled copy of the file, started
// from another folder, with srun and scontrol stubs that behave like SLURM's
// (srun starts --ntasks local ranks with SLURM_PROCID/LOCALID/NTASKS set and
// passes signals on; scontrol requeue is recorded). A USR1 to the batch shell
// in the middle of a two-rank Gloo run must checkpoint and requeue; the
// requeued job must resume and end with the losses of a run never stopped.
#include <gtest/gtest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "iris/io/image_io.h"
#include "iris/model/model_file.h"
#include "support/test_support.h"

extern char** environ;
namespace fs = std::filesystem;

namespace {

const std::string kRepo = std::string(IRIS_TEST_DATA_DIR) + "/..";
const std::string kData = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";

std::string bin_dir() {
  const char* dir = std::getenv("IRIS_BIN_DIR");
  return dir ? dir : IRIS_BINARY_DIR;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_script(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
  fs::permissions(p, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read);
}

// Losses of metrics.jsonl by iteration.
std::map<long, double> losses(const fs::path& metrics) {
  std::map<long, double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_discarded()) continue;  // a line being written right now
    out[row["iteration"].get<long>()] = row["loss"].get<double>();
  }
  return out;
}

class SlurmScripts : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_DATA(kData + "KmeansTest_T1UCharRaw.nii.gz");
    root = iris::testing::temp_folder("slurm");
    for (const char* d : {"data", "stubs", "spool", "work"}) fs::create_directories(root / d);
    fs::copy_file(kData + "KmeansTest_T1UCharRaw.nii.gz", root / "data" / "t1.nii.gz");
    iris::io::Image strip = iris::io::read_labels(kData + "KmeansTest_T1RawSkullStrip.nii.gz");
    strip.voxels = strip.voxels.gt(0).to(at::kByte);
    iris::io::write_image(strip, (root / "data" / "brain.nii.gz").string());
    // The config asks for the GPU; the submission line overrides it with
    // --set train.device=cpu, which the scripts must pass on untouched.
    std::ofstream(root / "train.yaml") << "model:\n  preset: tiny\n  memory_bank_size: 2\n"
                                       << "preprocess:\n  spacing: [6, 6, 6]\n"
                                       << "train:\n  iterations: 24\n  batch: 2\n  patch: 32\n  max_classes: 1\n"
                                       << "  warmup: 1\n  checkpoint_every: 0\n  validate_every: 0\n  log_every: 1\n"
                                       << "  device: cuda\n  distributed: gloo\n  threads: 1\n  tensorboard: false\n"
                                       << "  loader_workers: 1\n"
                                       << "data:\n  datasets:\n    brain:\n      layout: list\n"
                                       << "      root: " << (root / "data").string() << "\n"
                                       << "      classes: [\"1:brain\"]\n      split: [1, 0, 0]\n"
                                       << "      cases: [\"t1.nii.gz|brain.nii.gz\"]\n";
    // srun: --ntasks ranks (default SLURM_NTASKS) of the command, signals passed on.
    write_script(root / "stubs" / "srun", R"(#!/bin/bash
n=${SLURM_NTASKS:-1}
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in --ntasks=*) n=${1#*=};; -n|--ntasks) n=$2; shift;; esac
  shift
done
echo "srun $n: $*" >> "$STUB_LOG"
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_NTASKS_PER_NODE=$n "$@" &
  pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
rc=0
for p in "${pids[@]}"; do
  r=0
  wait "$p" || r=$?
  while kill -0 "$p" 2>/dev/null; do r=0; wait "$p" || r=$?; done
  [ "$r" -gt "$rc" ] && rc=$r
done
exit $rc
)");
    write_script(root / "stubs" / "scontrol", R"(#!/bin/bash
case "$1 $2" in
  "show hostnames") echo localhost ;;
  "requeue "*) echo "requeue $2" >> "$STUB_LOG" ;;
  *) echo "scontrol stub: $*" >&2; exit 1 ;;
esac
)");
  }
  void TearDown() override { fs::remove_all(root); }

  // Starts the spooled copy of `script` as SLURM would; returns the batch shell's pid.
  pid_t submit(const std::string& script, const fs::path& out, const std::string& log, int restart_count,
               const std::string& iris_bin) {
    const fs::path spooled = root / "spool" / "slurm_script";
    fs::copy_file(kRepo + "/slurm/" + script, spooled, fs::copy_options::overwrite_existing);
    std::vector<std::string> env{"PATH=" + (root / "stubs").string() + ":" + std::getenv("PATH"),
                                 "SLURM_SUBMIT_DIR=" + fs::canonical(kRepo).string(),
                                 "SLURM_JOB_ID=4242",
                                 "SLURM_JOB_NODELIST=node[01]",
                                 "SLURM_CPUS_PER_TASK=1",
                                 "SLURM_NTASKS=2",
                                 "SLURM_RESTART_COUNT=" + std::to_string(restart_count),
                                 "MASTER_PORT=" + std::to_string(iris::testing::free_port()),
                                 "IRIS_BIN=" + iris_bin,
                                 "STUB_LOG=" + (root / "stub.log").string(),
                                 "HOME=" + root.string()};
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    const std::string command = "cd " + iris::testing::shell_quoted((root / "work").string()) + " && exec bash " +
                                iris::testing::shell_quoted(spooled.string()) + " " +
                                iris::testing::shell_quoted((root / "train.yaml").string()) +
                                " --set train.device=cpu --set train.output_dir=" +
                                iris::testing::shell_quoted(out.string()) + " > " +
                                iris::testing::shell_quoted(log) + " 2>&1";
    char* argv[] = {const_cast<char*>("/bin/bash"), const_cast<char*>("-c"), const_cast<char*>(command.c_str()), nullptr};
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, "/bin/bash", nullptr, nullptr, argv, envp.data()), 0);
    return pid;
  }

  static int wait_for(pid_t pid, double timeout_s = 300) {
    int status = 0;
    const auto start = std::chrono::steady_clock::now();
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
        ::kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ADD_FAILURE() << "the job did not end within " << timeout_s << " s";
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path root;
};

}  // namespace

TEST_F(SlurmScripts, PreemptedJobCheckpointsRequeuesAndResumesToTheSameLosses) {
  // An uninterrupted job first: the losses to reach.
  const pid_t whole = submit("train_1node_2gpu.sbatch", root / "whole", (root / "whole.log").string(), 0, bin_dir());
  ASSERT_EQ(wait_for(whole), 0) << read_text(root / "whole.log");
  EXPECT_EQ(read_text(root / "stub.log").find("requeue"), std::string::npos) << read_text(root / "stub.log");
  EXPECT_NE(read_text(root / "whole.log").find("2 rank(s), backend gloo, device cpu"), std::string::npos)
      << read_text(root / "whole.log");
  const auto reference = losses(root / "whole" / "metrics.jsonl");
  ASSERT_EQ(reference.size(), 24u);

  // The same job, pre-empted (B:USR1 to the batch shell) once it is a few iterations in.
  const fs::path out = root / "cut";
  const pid_t first = submit("train_1node_2gpu.sbatch", out, (root / "first.log").string(), 0, bin_dir());
  const auto start = std::chrono::steady_clock::now();
  while (losses(out / "metrics.jsonl").size() < 5 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 120)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(losses(out / "metrics.jsonl").size(), 5u) << read_text(root / "first.log");
  ASSERT_EQ(::kill(first, SIGUSR1), 0);
  EXPECT_EQ(wait_for(first), 0) << read_text(root / "first.log");
  EXPECT_NE(read_text(root / "stub.log").find("requeue 4242"), std::string::npos) << read_text(root / "stub.log");
  EXPECT_NE(read_text(root / "first.log").find("checkpoint written; requeueing job 4242"), std::string::npos)
      << read_text(root / "first.log");
  ASSERT_TRUE(fs::exists(out / "checkpoints" / "last.ckpt"));
  EXPECT_FALSE(fs::exists(out / "model.iris")) << "the pre-empted run should not have finished";
  const size_t done_before = losses(out / "metrics.jsonl").size();
  EXPECT_LT(done_before, 24u);

  // SLURM starts the requeued job with SLURM_RESTART_COUNT=1.
  const pid_t second = submit("train_1node_2gpu.sbatch", out, (root / "second.log").string(), 1, bin_dir());
  ASSERT_EQ(wait_for(second), 0) << read_text(root / "second.log");
  EXPECT_NE(read_text(root / "stub.log").find("--resume=auto"), std::string::npos) << read_text(root / "stub.log");
  EXPECT_TRUE(fs::exists(out / "model.iris"));
  const auto resumed = losses(out / "metrics.jsonl");
  EXPECT_EQ(resumed, reference) << "stopped after " << done_before << " iterations";
}

TEST_F(SlurmScripts, ScriptsFindIrisWithoutTheirOwnPath) {
  for (const std::string script : {"train_1node_2gpu.sbatch", "train_multinode.sbatch", "rsna_train.sbatch"}) {
    // The spooled copy sources its helper from IRIS_HOME (= SLURM_SUBMIT_DIR): a
    // missing build is reported by the helper, so it was found.
    const pid_t pid = submit(script, root / "none", (root / "missing.log").string(), 0, (root / "nowhere").string());
    EXPECT_EQ(wait_for(pid, 60), 2) << script;
    EXPECT_NE(read_text(root / "missing.log").find("no iris-train in IRIS_BIN=" + (root / "nowhere").string()),
              std::string::npos)
        << script << ": " << read_text(root / "missing.log");
  }
}

// The inference array: three tasks together segment every case once (each
// its own part), and a requeued task finds its cases done.
TEST_F(SlurmScripts, InferenceArraySegmentsEachCaseOnceAndARerunSkipsThem) {
  const fs::path queries = root / "queries", out = root / "masks";
  fs::create_directories(queries);
  fs::create_directories(out);
  at::manual_seed(0);
  for (int i = 0; i < 7; ++i) {
    iris::Image q;
    q.voxels = at::rand({16, 16, 16});
    q.geometry.size = {16, 16, 16};
    iris::io::write_image(q, (queries / ("case" + std::to_string(i) + ".nii.gz")).string());
  }
  iris::Image mask;
  mask.voxels = at::zeros({16, 16, 16}, at::kByte);
  mask.voxels.index_put_({at::indexing::Slice(4, 10), at::indexing::Slice(4, 10), at::indexing::Slice(4, 10)}, 1);
  mask.geometry.size = {16, 16, 16};
  iris::io::write_image(mask, (root / "ref_mask.nii.gz").string());
  fs::copy_file(queries / "case0.nii.gz", root / "ref.nii.gz");
  iris::model::IrisModel m;
  m.config = iris::model::preset("tiny");
  m.net = iris::model::IrisNet(m.config);
  iris::model::save_model(m, (root / "tiny.iris").string());

  const fs::path spooled = root / "spool" / "slurm_script";
  fs::copy_file(kRepo + "/slurm/infer_array.sbatch", spooled, fs::copy_options::overwrite_existing);
  auto task = [&](int id, const std::string& log) {
    const std::string command =
        "cd " + iris::testing::shell_quoted((root / "work").string()) + " && SLURM_ARRAY_TASK_ID=" + std::to_string(id) +
        " SLURM_ARRAY_TASK_COUNT=3 SLURM_ARRAY_TASK_MIN=0 SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR=" +
        iris::testing::shell_quoted(fs::canonical(kRepo).string()) + " IRIS_BIN=" + iris::testing::shell_quoted(bin_dir()) +
        " bash " + iris::testing::shell_quoted(spooled.string()) + " --model " +
        iris::testing::shell_quoted((root / "tiny.iris").string()) + " --reference " +
        iris::testing::shell_quoted((root / "ref.nii.gz").string()) + " --reference-mask " +
        iris::testing::shell_quoted((root / "ref_mask.nii.gz").string()) + " --preprocess zscore --window 16 --query " +
        iris::testing::shell_quoted(queries.string()) + " --output " + iris::testing::shell_quoted(out.string()) +
        " --device cpu > " + iris::testing::shell_quoted((root / log).string()) + " 2>&1";
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::vector<size_t> per_task;
  for (int id = 0; id < 3; ++id) {
    const size_t before = std::distance(fs::directory_iterator(out), fs::directory_iterator{});
    ASSERT_EQ(task(id, "task" + std::to_string(id) + ".log"), 0) << read_text(root / ("task" + std::to_string(id) + ".log"));
    per_task.push_back(std::distance(fs::directory_iterator(out), fs::directory_iterator{}) - before);
  }
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(fs::exists(out / ("case" + std::to_string(i) + ".nii.gz"))) << i;
  EXPECT_EQ(per_task[0] + per_task[1] + per_task[2], 7u);
  ASSERT_EQ(task(1, "again.log"), 0) << read_text(root / "again.log");
  EXPECT_NE(read_text(root / "again.log").find("already done (--continue)"), std::string::npos) << read_text(root / "again.log");
  // IRIS_CONTAINER: the same task through Apptainer (a stub that records its
  // arguments and runs the program as the image would, from its PATH); no
  // IRIS_BIN is needed then.
  write_script(root / "stubs" / "apptainer", R"(#!/bin/bash
echo "apptainer $*" >> "$STUB_LOG"
[ "$1" = exec ] || exit 9
shift
while [ "${1#--}" != "$1" ]; do shift; done
shift
PATH="$STUB_IMAGE_BIN:$PATH" exec "$@"
)");
  std::ofstream(root / "iris.sif") << "an image";
  fs::remove_all(out);
  fs::create_directories(out);
  const std::string contained =
      "cd " + iris::testing::shell_quoted((root / "work").string()) + " && PATH=" +
      iris::testing::shell_quoted((root / "stubs").string()) + ":$PATH STUB_LOG=" +
      iris::testing::shell_quoted((root / "stub.log").string()) + " STUB_IMAGE_BIN=" +
      iris::testing::shell_quoted(bin_dir()) + " IRIS_CONTAINER=" + iris::testing::shell_quoted((root / "iris.sif").string()) +
      " IRIS_BIN=/nowhere SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=1 SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR=" +
      iris::testing::shell_quoted(fs::canonical(kRepo).string()) + " bash " + iris::testing::shell_quoted(spooled.string()) +
      " --model " + iris::testing::shell_quoted((root / "tiny.iris").string()) + " --reference " +
      iris::testing::shell_quoted((root / "ref.nii.gz").string()) + " --reference-mask " +
      iris::testing::shell_quoted((root / "ref_mask.nii.gz").string()) + " --preprocess zscore --window 16 --query " +
      iris::testing::shell_quoted(queries.string()) + " --output " + iris::testing::shell_quoted(out.string()) +
      " --device cpu > " + iris::testing::shell_quoted((root / "contained.log").string()) + " 2>&1";
  ASSERT_EQ(WEXITSTATUS(std::system(contained.c_str())), 0) << read_text(root / "contained.log");
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(fs::exists(out / ("case" + std::to_string(i) + ".nii.gz"))) << i;
  EXPECT_NE(read_text(root / "stub.log").find("apptainer exec --nv " + (root / "iris.sif").string() + " iris-infer --model"),
            std::string::npos)
      << read_text(root / "stub.log");
  // A missing image is named.
  const std::string missing_image = "IRIS_CONTAINER=/nowhere/iris.sif SLURM_ARRAY_TASK_ID=0 SLURM_SUBMIT_DIR=" +
                                    iris::testing::shell_quoted(fs::canonical(kRepo).string()) + " bash " +
                                    iris::testing::shell_quoted(spooled.string()) + " > " +
                                    iris::testing::shell_quoted((root / "no_image.log").string()) + " 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(missing_image.c_str())), 2);
  EXPECT_NE(read_text(root / "no_image.log").find("IRIS_CONTAINER=/nowhere/iris.sif is not an image file"),
            std::string::npos)
      << read_text(root / "no_image.log");
  // Not an array task: a clear refusal.
  const std::string plain = "SLURM_SUBMIT_DIR=" + iris::testing::shell_quoted(fs::canonical(kRepo).string()) +
                            " IRIS_BIN=" + iris::testing::shell_quoted(bin_dir()) + " bash " +
                            iris::testing::shell_quoted(spooled.string()) + " > " +
                            iris::testing::shell_quoted((root / "plain.log").string()) + " 2>&1";
  const int status = std::system(plain.c_str());
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(read_text(root / "plain.log").find("not an array task"), std::string::npos);
}
