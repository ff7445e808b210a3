// The catalogue of bad inputs and faults: one row per case a hostile or
// unlucky user met, run through the real programs. Each row gives the
// command, the exit code it must end with (docs/cli.md: 2 usage, 3 bad input
// or failed write, never a crash), words the error must contain, and paths
// that must not exist afterwards (no output, no temporary file, no sign of
// code having run). Rows of what only the ITK build reads are registered
// there alone.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>

#include <ATen/ATen.h>
#include <torch/types.h>

#include "iris/common/folder_lock.h"
#include "iris/common/tensor_file.h"
#include "iris/io/image_io.h"
#include "iris/model/iris_net.h"
#include "iris/model/model_file.h"
#include "iris/model/task_embedding.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::shell_quoted;

namespace {

const std::string kRepo = std::string(IRIS_TEST_DATA_DIR) + "/..";
const std::string kDemoModel = kRepo + "/models/demo_brain.iris";
using iris::testing::kObliqueMr;
const std::string kPydicom = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";

std::string program(const std::string& name) { return shell_quoted(iris::testing::program_path(name)); }

// Inputs shared by the rows, made once.
struct Inputs {
  fs::path dir;
  std::string image, mask, query, model;
};

Inputs& inputs() {
  static std::unique_ptr<Inputs> made;
  if (made) return *made;
  made = std::make_unique<Inputs>();
  Inputs& in = *made;
  in.dir = iris::testing::temp_folder("bad_input_inputs");
  iris::io::Image img;
  img.geometry.size = {32, 32, 24};
  img.geometry.spacing = {2, 2, 2};
  const auto z = at::arange(24, at::kFloat).view({24, 1, 1}), y = at::arange(32, at::kFloat).view({1, 32, 1}),
             x = at::arange(32, at::kFloat).view({1, 1, 32});
  const at::Tensor blob = ((x - 16).pow(2) + (y - 15).pow(2) + (z - 12).pow(2)) < 64;
  img.voxels = blob.to(at::kFloat) * 100 + at::rand({24, 32, 32}) * 10;
  in.image = (in.dir / "image.nii.gz").string();
  iris::io::write_image(img, in.image);
  in.query = (in.dir / "query.nii.gz").string();
  iris::io::write_image(img, in.query);
  iris::io::Image mask = img;
  mask.voxels = blob.to(at::kByte);
  in.mask = (in.dir / "mask.nii.gz").string();
  iris::io::write_image(mask, in.mask);
  in.model = kDemoModel;
  return in;
}

// A NIfTI file of `img` with its header edited by `edit` (bytes of the 352-byte header).
std::string edited_nifti(const std::string& name, const std::function<void(std::string&)>& edit) {
  const fs::path path = inputs().dir / name;
  iris::io::Image img = iris::io::read_image(inputs().image);
  iris::io::write_image(img, (path.string() + ".tmp.nii"));
  std::ifstream f(path.string() + ".tmp.nii", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  fs::remove(path.string() + ".tmp.nii");
  edit(bytes);
  std::ofstream(path, std::ios::binary) << bytes;
  return path.string();
}

std::string flipped_copy(const std::string& from, const std::string& name, size_t count) {
  std::ifstream f(from, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  for (size_t i = 0; i < count; ++i) bytes[bytes.size() / 2 + i] ^= 0x5A;
  const fs::path path = inputs().dir / name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path.string();
}

// A training config for a two-case synthetic dataset; `extra` lines end up under train:.
std::string train_config(const fs::path& dir, const std::string& output, const std::string& extra = "") {
  fs::create_directories(dir);
  const std::string path = (dir / "train.yaml").string();
  std::ofstream(path) << "model:\n  preset: tiny\n  memory_bank_size: 2\n"
                      << "train:\n  iterations: 2\n  batch: 1\n  patch: 32\n  max_classes: 1\n  warmup: 1\n"
                      << "  checkpoint_every: 1\n  validate_every: 0\n  log_every: 1\n  tensorboard: false\n"
                      << "  output_dir: " << output << "\n" << extra
                      << "data:\n  datasets:\n    blob:\n      layout: list\n      root: " << inputs().dir.string() << "\n"
                      << "      classes: [\"1:blob\"]\n      split: [1, 0, 0]\n"
                      << "      cases: [\"image.nii.gz|mask.nii.gz\", \"query.nii.gz|mask.nii.gz\"]\n";
  return path;
}

// The TorchScript file of iris' first format whose __setstate__ creates `marker`.
std::string hostile_file(const fs::path& dir, const std::string& name, const fs::path& marker) {
  const std::string script = std::string(R"(
import sys, torch
from typing import Tuple
class Evil(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.zeros(1)
    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)
    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        self.training = state[1]
        self.w = torch.from_file(")") + marker.string() + R"(", True, 8)
torch.jit.save(torch.jit.script(Evil()), sys.argv[1])
)";
  std::ofstream(dir / "make.py") << script;
  const auto r = iris::testing::run_program(iris::testing::kPython, shell_quoted((dir / "make.py").string()) + " " +
                                                                    shell_quoted((dir / name).string()),
                                            (dir / "make.log").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  fs::remove(marker);
  return (dir / name).string();
}

// A copy of the demo model with `edit` applied, written by iris itself (so
// checksum and fingerprint are right: only the content is bad).
std::string model_variant(const fs::path& dir, const std::string& name,
                          const std::function<void(iris::model::IrisModel&)>& edit) {
  iris::model::IrisModel m = iris::model::load_model(kDemoModel);
  edit(m);
  const std::string path = (dir / name).string();
  iris::model::save_model(m, path);
  return path;
}

// A task of the demo model (its memory-bank tokens of class 1) with `edit`
// applied, written by iris (checksum right).
std::string task_variant(const fs::path& dir, const std::string& name,
                         const std::function<void(iris::model::TaskEmbedding&)>& edit) {
  const iris::model::IrisModel m = iris::model::load_model(kDemoModel);
  iris::model::TaskEmbedding t;
  for (const auto& s : m.net->memory_bank_tokens(at::tensor(std::vector<int64_t>{1}, at::kLong)))
    t.stages.push_back(s.to(at::kCPU).clone());
  t.labels = {1};
  t.model_fingerprint = m.fingerprint;
  edit(t);
  const std::string path = (dir / name).string();
  t.save(path);
  return path;
}

// A file of the safetensors form with its JSON header edited by `edit`
// (the 8-byte length fixed up, the tensor bytes as they were).
std::string edited_header(const std::string& from, const fs::path& to, const std::function<void(std::string&)>& edit) {
  std::ifstream f(from, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  std::string header = bytes.substr(8, n);
  edit(header);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header + bytes.substr(8 + n);
  std::ofstream(to, std::ios::binary) << out;
  return to.string();
}

// An MSD task folder (Task04_Hippocampus's layout) with `json` as its dataset.json.
fs::path msd_task(const fs::path& dir, const std::string& json) {
  const fs::path task = dir / "Task04_Hippocampus";
  fs::create_directories(task / "imagesTr");
  fs::create_directories(task / "labelsTr");
  fs::copy_file(inputs().image, task / "imagesTr" / "hippocampus_001.nii.gz");
  fs::copy_file(inputs().mask, task / "labelsTr" / "hippocampus_001.nii.gz");
  std::ofstream(task / "dataset.json") << json;
  return task;
}

struct Row {
  std::string name;
  // Prepares the case in `dir` (a fresh folder, or the full disk for disk rows) and returns the command line.
  std::function<std::string(const fs::path& dir)> command;
  int exit_code;
  std::vector<std::string> words;
  std::vector<std::string> absent;  // relative to dir
  long disk_bytes = 0;              // > 0: dir is a full tmpfs of this size
  long disk_left = 4096;            // bytes left free on it
  std::vector<std::string> present{};  // relative to dir: must still exist (users' files, outputs)
  std::function<void(const fs::path& dir)> check{};  // further checks after the run
};

void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

std::vector<Row> rows() {
  std::vector<Row> r;
  const std::string infer = program("iris-infer");
  auto one_shot = [=](const std::string& model, const std::string& query, const std::string& output) {
    return infer + " --model " + shell_quoted(model) + " --reference " + shell_quoted(inputs().image) +
           " --reference-mask " + shell_quoted(inputs().mask) + " --query " + shell_quoted(query) + " --output " +
           shell_quoted(output);
  };
  // 1. Files people share must not run code.
  r.push_back({"HostileModelFile",
               [=](const fs::path& d) {
                 return one_shot(hostile_file(d, "evil.iris", d / "code_ran"), inputs().query, (d / "out.nii.gz").string());
               },
               3, {"first format", "iris-import --trust-legacy"}, {"code_ran", "out.nii.gz"}});
  r.push_back({"HostileTaskFile",
               [=](const fs::path& d) {
                 return infer + " --model " + shell_quoted(kDemoModel) + " --task " +
                        shell_quoted(hostile_file(d, "evil.task", d / "code_ran")) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"first format", "iris-import --trust-legacy"}, {"code_ran", "out.nii.gz"}});
  // 2-3. A full disk is an error, never a success or a crash, and leaves nothing.
  r.push_back({"FullDiskMask", [=](const fs::path& d) { return one_shot(kDemoModel, inputs().query, (d / "mask.nii").string()); },
               3, {"mask.nii", "no space left on the device"}, {"mask.nii"}, 160 * 1024});
  r.push_back({"FullDiskReport",
               [=](const fs::path& d) {
                 return one_shot(kDemoModel, inputs().query, (inputs().dir / "report_mask.nii.gz").string()) +
                        " --report " + shell_quoted((d / "run.json").string());
               },
               3, {"run.json", "no space left on the device"}, {"run.json"}, 64 * 1024, 0});
  r.push_back({"FullDiskHtmlReport",
               [=](const fs::path& d) {
                 return program("iris-eval") + " --reference " + shell_quoted(inputs().mask) + " --prediction " +
                        shell_quoted(inputs().mask) + " --output " +
                        shell_quoted((inputs().dir / "html_summary.json").string()) + " --html " +
                        shell_quoted((d / "report").string()) + " --image " + shell_quoted(inputs().image);
               },
               3, {"no space left on the device"}, {"report"}, 96 * 1024});
  r.push_back({"FullDiskImport",
               [=](const fs::path& d) {
                 return program("iris-import") + " " + shell_quoted(kRepo + "/tests/fixtures/mass_tiny/model.pt") +
                        " --set head_dim=32 --output " + shell_quoted((d / "model.iris").string());
               },
               3, {"model.iris", "no space left on the device"}, {"model.iris"}, 1024 * 1024});
  r.push_back({"FullDiskCheckpoint",
               [=](const fs::path& d) {
                 return program("iris-train") + " " +
                        shell_quoted(train_config(inputs().dir / "full_disk_train", (d / "run").string()));
               },
               3, {"no space left on the device"}, {"run/checkpoints/last.ckpt", "run/model.iris"}, 2 * 1024 * 1024});
  // 4. Damaged voxels never read as an image.
  r.push_back({"NiftiMissingItsLast5000Bytes",
               [=](const fs::path& d) {
                 iris::io::Image big = iris::io::read_image(inputs().image);
                 iris::io::write_image(big, (d / "cut.nii").string());
                 fs::resize_file(d / "cut.nii", fs::file_size(d / "cut.nii") - 5000);
                 return one_shot(kDemoModel, (d / "cut.nii").string(), (d / "out.nii.gz").string());
               },
               3, {"cut.nii", "truncated"}, {"out.nii.gz"}});
  r.push_back({"NiftiVoxOffsetPastTheEnd",
               [=](const fs::path&) {
                 const std::string path = edited_nifti("far.nii", [](std::string& h) {
                   const float offset = static_cast<float>(h.size() + 1000);
                   std::memcpy(h.data() + 108, &offset, 4);
                 });
                 return one_shot(kDemoModel, path, (inputs().dir / "far_out.nii.gz").string());
               },
               3, {"far.nii", "past the end of the file"}, {}});
  // 6. Silent changes are errors now.
  r.push_back({"NegativeReferenceLabel",
               [=](const fs::path& d) {
                 iris::io::Image m = iris::io::read_labels(inputs().mask);
                 m.voxels = m.voxels.to(at::kShort);
                 m.voxels[2][3][4] = -1;
                 iris::io::write_image(m, (d / "negative.nii.gz").string());
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + shell_quoted(inputs().image) +
                        " --reference-mask " + shell_quoted((d / "negative.nii.gz").string()) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"negative.nii.gz", "label value -1"}, {"out.nii.gz"}});
  r.push_back({"ZeroVoxelSize",
               [=](const fs::path&) {
                 const std::string path = edited_nifti("flat.nii", [](std::string& h) {
                   const float zero = 0;
                   std::memcpy(h.data() + 80, &zero, 4);   // pixdim[1]
                   const int16_t none = 0;
                   std::memcpy(h.data() + 254, &none, 2);  // no sform
                 });
                 return one_shot(kDemoModel, path, (inputs().dir / "flat_out.nii.gz").string());
               },
               3, {"flat.nii", "no voxel size"}, {}});
  r.push_back({"AllNanQuery",
               [=](const fs::path& d) {
                 iris::io::Image q = iris::io::read_image(inputs().query);
                 q.voxels.fill_(std::nanf(""));
                 iris::io::write_image(q, (d / "nan.nii.gz").string());
                 return one_shot(kDemoModel, (d / "nan.nii.gz").string(), (d / "out.nii.gz").string());
               },
               3, {"nan.nii.gz", "NaN or infinite voxel(s)", "--nan-as"}, {"out.nii.gz"}});
  r.push_back({"DuplicateYamlKey",
               [=](const fs::path& d) {
                 const std::string config = train_config(d, (d / "run").string(), "  lr: 0.1\n  lr: 0.2\n");
                 return program("iris-train") + " " + shell_quoted(config);
               },
               3, {"key 'train.lr' is set twice (lines"}, {"run"}});
  r.push_back({"ConfigIncludesItselfThroughAnother",
               [=](const fs::path& d) {
                 train_config(d, (d / "run").string());
                 std::ofstream(d / "loop.yaml") << "include: train_on_top.yaml\n";
                 std::ofstream(d / "train_on_top.yaml") << "include: [train.yaml, loop.yaml]\n";
                 return program("iris-train") + " " + shell_quoted((d / "train_on_top.yaml").string());
               },
               3, {"loop", "train_on_top.yaml -> ", "loop.yaml"}, {"run"}});
  r.push_back({"ConfigIncludesAMissingFile",
               [=](const fs::path& d) {
                 train_config(d, (d / "run").string());
                 std::ofstream(d / "on_top.yaml") << "include: [train.yaml, base/gone.yaml]\ntrain:\n  lr: 0.1\n";
                 return program("iris-train") + " " + shell_quoted((d / "on_top.yaml").string());
               },
               3, {"on_top.yaml", "no such file", "base/gone.yaml"}, {"run"}});
  r.push_back({"FlippedBytesInAModel",
               [=](const fs::path& d) {
                 return one_shot(flipped_copy(kDemoModel, "flipped.iris", 400), inputs().query, (d / "out.nii.gz").string());
               },
               3, {"flipped.iris", "is damaged"}, {"out.nii.gz"}});
  r.push_back({"FlippedBytesInACheckpoint",
               [=](const fs::path& d) {
                 const std::string config = train_config(d, (d / "run").string());
                 const auto first = iris::testing::run_program(program("iris-train"), shell_quoted(config),
                                                               (d / "first.log").string());
                 EXPECT_EQ(first.exit_code, 0) << first.output;
                 const std::string last = (d / "run" / "checkpoints" / "last.ckpt").string();
                 fs::rename(flipped_copy(last, "flipped.ckpt", 400), last);
                 for (const auto& e : fs::directory_iterator(d / "run" / "checkpoints"))
                   if (e.path().filename() != "last.ckpt") fs::remove(e.path());
                 return program("iris-train") + " " + shell_quoted(config) + " --resume";
               },
               3, {"last.ckpt", "is damaged"}, {}});
  r.push_back({"ReversedLabelRange",
               [=](const fs::path& d) {
                 return program("iris-labels") + " map --input " + shell_quoted(inputs().mask) + " --map 5-1:2 --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               2, {"usage error: --map", "range 5-1", "is empty"}, {"out.nii.gz"}});
  r.push_back({"ThresholdNan",
               [=](const fs::path& d) {
                 return program("iris-labels") + " threshold --input " + shell_quoted(inputs().image) +
                        " --above nan --output " + shell_quoted((d / "out.nii.gz").string());
               },
               2, {"--above", "not a finite number"}, {"out.nii.gz"}});
  r.push_back({"NegativeQueries", [=](const fs::path&) { return program("iris-bench") + " --queries -1"; }, 2,
               {"--queries"}, {}});
  // The library names settings; each program writes them as its flags (#37).
  r.push_back({"LoaderShapeOfTwoSizes", [=](const fs::path&) { return program("iris-bench") + " --loader --loader-shape 8,8"; },
               2, {"usage error: --loader-shape: needs three sizes"}, {}});
  // The allocator's refusal names the settings the memory grows with (#35).
  r.push_back({"AllocationRefused",
               [=](const fs::path&) {
                 return "ulimit -v 4000000; " + program("iris-bench") +
                        " --preset tiny --patch 256 --batch 16 --no-backward --warmup 0 --repeats 1 --threads 1";
               },
               1, {"error: out of memory: ", "GB asked for and refused; the memory grows with --patch, --batch"}, {}});
  // --config/--set: one rule in every program (#37). iris-bench read only a
  // model: section, so a file of model keys alone was ignored without a word.
  r.push_back({"BenchConfigOfModelKeysAlone",
               [=](const fs::path& d) {
                 std::ofstream(d / "flat.yaml") << "head_dim: many\n";
                 return program("iris-bench") + " --config " + shell_quoted((d / "flat.yaml").string()) +
                        " --warmup 0 --repeats 1 --threads 1";
               },
               3, {"flat.yaml", "head_dim: expected an integer, got 'many'"}, {}});
  r.push_back({"BenchOverrideOfASectionItDoesNotRead",
               [=](const fs::path&) { return program("iris-bench") + " --set train.lr=1"; }, 2,
               {"usage error: --set: 'train.lr=1': this program reads only the section model"}, {}});
  r.push_back({"BenchGivenBothLayouts",
               [=](const fs::path&) { return program("iris-bench") + " --channels-last --channels-first"; }, 2,
               {"usage error: --channels-first: goes with --channels-last"}, {}});
  r.push_back({"OverrideThatIsNoNumber",
               [=](const fs::path& d) {
                 return program("iris-train") + " " + shell_quoted(train_config(d, (d / "run").string())) +
                        " --set train.lr=fast";
               },
               2, {"usage error: --set: lr: expected a finite number, got 'fast'"}, {"run"}});
  r.push_back({"ReportImageThatIsMissing",
               [=](const fs::path& d) {
                 return program("iris-eval") + " --reference " + shell_quoted(inputs().mask) + " --prediction " +
                        shell_quoted(inputs().mask) + " --html " + shell_quoted((d / "report").string()) +
                        " --image " + shell_quoted((d / "missing.nii.gz").string());
               },
               3, {"missing.nii.gz: --image does not exist"}, {"report"}});
  r.push_back({"OverlapOutOfRange",
               [=](const fs::path& d) {
                 return one_shot(kDemoModel, inputs().query, (d / "out.nii.gz").string()) + " --overlap 2";
               },
               2, {"--overlap", "is not a number from 0 to 0.95"}, {"out.nii.gz"}});
  r.push_back({"NegativeTolerance",
               [=](const fs::path&) {
                 return program("iris-eval") + " --reference " + shell_quoted(inputs().mask) + " --prediction " +
                        shell_quoted(inputs().mask) + " --tolerance-mm -1";
               },
               2, {"--tolerance-mm"}, {}});
  // 7. Sizes that would blow memory up are refused before anything is allocated.
  r.push_back({"ThreeThousandLabels",
               [=](const fs::path& d) {
                 iris::io::Image m = iris::io::read_labels(inputs().mask);
                 m.voxels = at::arange(m.voxels.numel(), at::kInt).reshape(m.voxels.sizes()).remainder(3000);
                 iris::io::write_image(m, (d / "many.nii.gz").string());
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + shell_quoted(inputs().image) +
                        " --reference-mask " + shell_quoted((d / "many.nii.gz").string()) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"many.nii.gz", "2999 distinct label values", "--max-labels"}, {"out.nii.gz"}});
  r.push_back({"EditedClassNamesInAModel",
               [=](const fs::path& d) {
                 std::ifstream f(kDemoModel, std::ios::binary);
                 std::string bytes((std::istreambuf_iterator<char>(f)), {});
                 const size_t at = bytes.find("class_names");
                 EXPECT_NE(at, std::string::npos);
                 bytes[at + 20] = bytes[at + 20] == 'x' ? 'y' : 'x';  // inside the stored list
                 std::ofstream(d / "edited.iris", std::ios::binary) << bytes;
                 return one_shot((d / "edited.iris").string(), inputs().query, (d / "out.nii.gz").string());
               },
               3, {"edited.iris", "damaged"}, {"out.nii.gz"}});
  r.push_back({"PatchLargerThanTheModel",
               [=](const fs::path& d) {
                 return program("iris-train") + " " + shell_quoted(train_config(d, (d / "run").string())) +
                        " --set train.patch=4096";
               },
               3, {"train.patch", "max_patch_size"}, {"run"}});
  // 8. Names read from files never leave the output folder (#35).
  const std::string data = program("iris-data");
  const std::string msd_json_head =
      R"({"name": "Hippocampus", "modality": {"0": "MRI"}, "training": [{"image": "./imagesTr/hippocampus_001.nii.gz", )"
      R"("label": "./labelsTr/hippocampus_001.nii.gz"}], "test": [], )";
  // iris-data convert msd of the task msd_task wrote in `d`, into `to` (relative to d).
  auto convert_msd = [=](const fs::path& d, const fs::path& to) {
    return data + " convert msd " + shell_quoted((d / "Task04_Hippocampus").string()) + " " + shell_quoted((d / to).string());
  };
  r.push_back({"MsdNegativeLabelKey",
               [=](const fs::path& d) {
                 msd_task(d, msd_json_head + R"("labels": {"0": "background", "-3": "Anterior"}})");
                 return convert_msd(d, "out");
               },
               3, {"dataset.json", "label key '-3'"}, {"out"}});
  r.push_back({"MsdLabelKeyOf2To40",
               [=](const fs::path& d) {
                 msd_task(d, msd_json_head + R"("labels": {"0": "background", "1099511627776": "Anterior"}})");
                 return convert_msd(d, "out");
               },
               3, {"dataset.json", "label key '1099511627776'", "0 to 65535"}, {"out"}});
  r.push_back({"MsdImageOutsideItsTaskFolder",
               [=](const fs::path& d) {
                 fs::create_directories(d / "elsewhere");
                 fs::copy_file(inputs().image, d / "elsewhere" / "secret.nii.gz");
                 msd_task(d, R"({"name": "H", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"},)"
                             R"( "training": [{"image": "../elsewhere/secret.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"}]})");
                 return convert_msd(d, "out");
               },
               3, {"../elsewhere/secret.nii.gz", "outside the task folder"}, {"out"}});
  r.push_back({"MsdChannelNamedByANumber",
               [=](const fs::path& d) {
                 msd_task(d, R"({"name": "H", "modality": {"0": 7}, "labels": {"0": "background", "1": "Anterior"},)"
                             R"( "training": [{"image": "./imagesTr/hippocampus_001.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"}]})");
                 return convert_msd(d, "out");
               },
               3, {"dataset.json", "modality: channel 0 is not named by a string"}, {"out"}});
  r.push_back({"MsdLabelKeyTwice",
               [=](const fs::path& d) {
                 msd_task(d, msd_json_head + R"("labels": {"0": "background", "1": "Anterior", "1": "Posterior"}})");
                 return convert_msd(d, "out");
               },
               3, {"dataset.json", "the key '1' appears twice"}, {"out"}});
  r.push_back({"ConvertIntoAMissingParentFolder",
               [=](const fs::path& d) {
                 msd_task(d, msd_json_head + R"("labels": {"0": "background", "1": "Anterior"}})");
                 return convert_msd(d, fs::path("new") / "deeper" / "out");
               },
               0, {"class 'Anterior' is named 'hippocampus_anterior'"}, {}, 0, 4096, {"new/deeper/out/dataset.json"}});
  // 9. Outputs never replace inputs, users' files or links (#35).
  r.push_back({"OutputIsTheQueryFolder",
               [=](const fs::path& d) {
                 fs::create_directories(d / "qs");
                 fs::copy_file(inputs().query, d / "qs" / "case.nii.gz");
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + shell_quoted(inputs().image) +
                        " --reference-mask " + shell_quoted(inputs().mask) + " --query " + shell_quoted((d / "qs").string()) +
                        " --output " + shell_quoted((d / "qs").string()) + " --overwrite";
               },
               2, {"usage error: --output", "lies inside the query folder"}, {}, 0, 4096, {"qs/case.nii.gz"},
               [](const fs::path& d) {
                 // Still the image, not a label map written over it.
                 EXPECT_TRUE(iris::io::read_image((d / "qs" / "case.nii.gz").string()).voxels.max().item<double>() > 50);
               }});
  r.push_back({"OutputIsASymlink",
               [=](const fs::path& d) {
                 fs::create_directories(d / "store");
                 std::ofstream(d / "store" / "mask.nii.gz") << "old";
                 fs::create_symlink(d / "store" / "mask.nii.gz", d / "link.nii.gz");
                 return one_shot(kDemoModel, inputs().query, (d / "link.nii.gz").string()) + " --overwrite";
               },
               0, {}, {}, 0, 4096, {"link.nii.gz", "store/mask.nii.gz"},
               [](const fs::path& d) {
                 EXPECT_TRUE(fs::is_symlink(d / "link.nii.gz")) << "the link was replaced by a file";
                 EXPECT_GT(fs::file_size(d / "store" / "mask.nii.gz"), 100u) << "the mask did not go to the link's target";
                 for (const auto& e : fs::directory_iterator(d / "store"))
                   EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
               }});
  r.push_back({"HtmlReportOverAFolderWithUsersFiles",
               [=](const fs::path& d) {
                 fs::create_directories(d / "report");
                 std::ofstream(d / "report" / "index.html") << "<html>my own page</html>";
                 std::ofstream(d / "report" / "notes.txt") << "my notes";
                 return program("iris-eval") + " --reference " + shell_quoted(inputs().mask) + " --prediction " +
                        shell_quoted(inputs().mask) + " --output " + shell_quoted((d / "summary.json").string()) +
                        " --html " + shell_quoted((d / "report").string());
               },
               3, {"report", "not an iris report", "not replacing it"}, {}, 0, 4096,
               {"report/notes.txt", "report/index.html"}});
  r.push_back({"HtmlReportOverAnIrisReportWithAUserFileAdded",
               [=](const fs::path& d) {
                 const std::string eval = program("iris-eval") + " --reference " + shell_quoted(inputs().mask) +
                                          " --prediction " + shell_quoted(inputs().mask) + " --output " +
                                          shell_quoted((d / "summary.json").string()) + " --html " +
                                          shell_quoted((d / "report").string());
                 const auto first = iris::testing::run_program(eval, "", (d / "first.log").string());
                 EXPECT_EQ(first.exit_code, 0) << first.output;
                 std::ofstream(d / "report" / "notes.txt") << "my notes";
                 return eval;
               },
               3, {"report", "did not write (notes.txt)"}, {}, 0, 4096, {"report/notes.txt"}});
  r.push_back({"SecondTrainingRunIntoOneFolder",
               [=](const fs::path& d) {
                 const std::string config = train_config(d, (d / "run").string());
                 fs::create_directories(d / "run");
                 static std::unique_ptr<iris::FolderLock> held;  // the first run, still going
                 held = std::make_unique<iris::FolderLock>((d / "run").string(), "test");
                 return program("iris-train") + " " + shell_quoted(config);
               },
               3, {"run", "is in use by another run (process", "train.output_dir"}, {"run/split_blob.tsv", "run/model.iris"}});
  r.push_back({"TrainingCaseMissing",
               [=](const fs::path& d) {
                 const std::string config = train_config(d, (d / "run").string());
                 std::ifstream f(config);
                 std::string text((std::istreambuf_iterator<char>(f)), {});
                 text.replace(text.find("query.nii.gz|"), 13, "gone.nii.gz|");
                 std::ofstream(config) << text;
                 return program("iris-train") + " " + shell_quoted(config);
               },
               3, {"gone.nii.gz"}, {"run"}});
  r.push_back({"NegativeSplitFraction",
               [=](const fs::path& d) {
                 const std::string config = train_config(d, (d / "run").string());
                 std::ifstream f(config);
                 std::string text((std::istreambuf_iterator<char>(f)), {});
                 text.replace(text.find("split: [1, 0, 0]"), 16, "split: [1, -0.5, 0]");
                 std::ofstream(config) << text;
                 return program("iris-train") + " " + shell_quoted(config);
               },
               3, {"data.datasets.blob.split", "'-0.5' is not a fraction >= 0"}, {"run"}});
  // Flags that belong together, checked after parsing (no CLI11 "Needs:" in --help).
  r.push_back({"ReportImageWithoutAReport",
               [=](const fs::path& d) {
                 return program("iris-eval") + " --reference " + shell_quoted(inputs().mask) + " --prediction " +
                        shell_quoted(inputs().mask) + " --output " + shell_quoted((d / "summary.json").string()) +
                        " --image " + shell_quoted(inputs().image);
               },
               2, {"--image", "needs --html"}, {"summary.json"}});
  r.push_back({"SkullStripTaskWithoutSkullStrip",
               [=](const fs::path& d) {
                 return program("iris-preprocess") + " --input " + shell_quoted(inputs().image) + " --output " +
                        shell_quoted((d / "pre.nii.gz").string()) + " --skull-strip-task " +
                        shell_quoted((d / "brain.task").string());
               },
               2, {"--skull-strip-task", "needs --skull-strip"}, {"pre.nii.gz"}});
  // Blending on the GPU asked for with no GPU: a flag problem, before any work.
  r.push_back({"BlendOnTheGpuWithoutOne",
               [=](const fs::path& d) {
                 return one_shot(kDemoModel, inputs().query, (d / "out.nii.gz").string()) +
                        " --no-aggregate-on-cpu --device cpu";
               },
               2, {"--no-aggregate-on-cpu", "needs --device cuda"}, {"out.nii.gz"}});
  // Loss settings (#39) are refused before anything runs, naming the key.
  r.push_back({"UnknownLossName",
               [=](const fs::path& d) {
                 return program("iris-train") + " " +
                        shell_quoted(train_config(d, (d / "run").string(), "  loss: focal\n")) + " --dump-config";
               },
               3, {"train.loss", "unknown loss 'focal'", "soft_dice, adaptive_tversky"}, {"run"}});
  r.push_back({"NegativeLossWeight",
               [=](const fs::path& d) {
                 return program("iris-train") + " " +
                        shell_quoted(train_config(d, (d / "run").string(), "  bce_weight: -1\n")) + " --dump-config";
               },
               3, {"train.bce_weight", "must be a finite number >= 0"}, {"run"}});
  r.push_back({"AllLossWeightsZero",
               [=](const fs::path& d) {
                 return program("iris-train") + " " +
                        shell_quoted(train_config(d, (d / "run").string(), "  dice_weight: 0\n  bce_weight: 0\n")) +
                        " --dump-config";
               },
               3, {"train.dice_weight", "both 0"}, {"run"}});
  // 10. Models and tasks whose checksum holds but whose content is unusable (#35).
  r.push_back({"ModelWithANanWeight",
               [=](const fs::path& d) {
                 const std::string model = model_variant(d, "nan.iris", [](iris::model::IrisModel& m) {
                   torch::NoGradGuard no_grad;
                   m.net->parameters()[3].view(-1)[0] = std::nanf("");
                 });
                 return one_shot(model, inputs().query, (d / "out.nii.gz").string());
               },
               3, {"nan.iris", "NaN or infinite value"}, {"out.nii.gz"}});
  r.push_back({"TaskWithInfiniteTokens",
               [=](const fs::path& d) {
                 const std::string task = task_variant(d, "inf.task", [](iris::model::TaskEmbedding& t) {
                   t.stages[0].view(-1)[5] = std::numeric_limits<float>::infinity();
                 });
                 return infer + " --model " + shell_quoted(kDemoModel) + " --task " + shell_quoted(task) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"inf.task", "NaN or infinite value"}, {"out.nii.gz"}});
  r.push_back({"TaskLabelMinus3",
               [=](const fs::path& d) {
                 const std::string task = task_variant(d, "minus.task", [](iris::model::TaskEmbedding& t) { t.labels = {-3}; });
                 return infer + " --model " + shell_quoted(kDemoModel) + " --task " + shell_quoted(task) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"minus.task", "label value -3"}, {"out.nii.gz"}});
  r.push_back({"TaskLabelGivenTwice",
               [=](const fs::path& d) {
                 const std::string task = task_variant(d, "twice.task", [](iris::model::TaskEmbedding& t) {
                   for (auto& s : t.stages) s = at::cat({s, s});
                   t.labels = {2, 2};
                 });
                 return infer + " --model " + shell_quoted(kDemoModel) + " --task " + shell_quoted(task) + " --query " +
                        shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"twice.task", "label value 2 is given twice"}, {"out.nii.gz"}});
  r.push_back({"ModelHeaderWithAKeyTwice",
               [=](const fs::path& d) {
                 const std::string model = edited_header(kDemoModel, d / "twice.iris", [](std::string& h) {
                   h.replace(0, 17, R"({"__metadata__":{"description":"from elsewhere",)");
                 });
                 return one_shot(model, inputs().query, (d / "out.nii.gz").string());
               },
               3, {"twice.iris", "the key 'description' appears twice"}, {"out.nii.gz"}});
  r.push_back({"ModelConfigAskingForAMillionBankSlots",
               [=](const fs::path& d) {
                 const iris::TensorFile file = iris::TensorFile::load(kDemoModel, "", "model");
                 iris::TensorFile edited(file.format());
                 for (const auto& [k, v] : file.metadata()) edited.set(k, v);
                 std::string config = file.meta("config");
                 config.replace(config.find("memory_bank_size: 8"), 19, "memory_bank_size: 1000000");
                 edited.set("config", config);
                 for (const auto& [k, v] : file.tensors()) edited.put(k, v);
                 edited.save((d / "huge.iris").string());
                 return one_shot((d / "huge.iris").string(), inputs().query, (d / "out.nii.gz").string());
               },
               3, {"huge.iris", "memory_bank_size 1000000", "8 slots"}, {"out.nii.gz"}});
  r.push_back({"ModelWithoutPreprocessing",
               [=](const fs::path& d) {
                 const std::string model = model_variant(d, "raw.iris", [](iris::model::IrisModel& m) { m.preprocess.clear(); });
                 return one_shot(model, inputs().query, (d / "out.nii.gz").string());
               },
               3, {"raw.iris", "stores no preprocessing", "--preprocess none"}, {"out.nii.gz"}});
  r.push_back({"ImportWithoutHeadDim",
               [=](const fs::path& d) {
                 return program("iris-import") + " " + shell_quoted(kRepo + "/tests/fixtures/mass_tiny/model.pt") +
                        " --set mlp_ratio=2 --output " + shell_quoted((d / "model.iris").string());
               },
               3, {"model.pt", "head width", "head_dim"}, {"model.iris"}});
  r.push_back({"ImageGivenAsReferenceMask",
               [=](const fs::path& d) {
                 const std::string ch2 = "/usr/share/mricron/templates/ch2.nii.gz";
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + ch2 + " --reference-mask " + ch2 +
                        " --query " + shell_quoted(inputs().query) + " --output " + shell_quoted((d / "out.nii.gz").string());
               },
               3, {"ch2.nii.gz", "248 distinct label values", "at most 64", "--max-labels"}, {"out.nii.gz"}});
  r.push_back({"TtaWithAModelTrainedWithoutMirroring",
               [=](const fs::path& d) {
                 // The shipped model records its mirror axes: this copy of it does not, as a model file
                 // written before train.augment_mirror existed.
                 const std::string model =
                     model_variant(d, "unmirrored.iris", [](iris::model::IrisModel& m) { m.mirror_axes.clear(); });
                 return one_shot(model, inputs().query, (d / "out.nii.gz").string()) + " --tta";
               },
               2, {"usage error: --tta", "unmirrored.iris", "not trained with mirror augmentation"}, {"out.nii.gz"}});
  r.push_back({"MirrorAlongAnAxisThatIsNone",
               [=](const fs::path& d) {
                 return program("iris-train") + " " + shell_quoted(train_config(d, (d / "run").string())) +
                        " --set train.augment_mirror=[x,w]";
               },
               3, {"train.augment_mirror", "'w' is not an axis"}, {"run"}});
  // 12. One rule for exits in every program (docs/cli.md): a flag problem is 2.
  r.push_back({"InferWithoutAModel",
               [=](const fs::path& d) {
                 return infer + " --reference " + shell_quoted(inputs().image) + " --reference-mask " +
                        shell_quoted(inputs().mask) + " --query " + shell_quoted(inputs().query) + " --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               2, {"usage error: --model", "is required"}, {"out.nii.gz"}});
  r.push_back({"EvalWithoutAPrediction",
               [=](const fs::path&) { return program("iris-eval") + " --reference " + shell_quoted(inputs().mask); },
               2, {"--prediction", "required"}, {}});
  r.push_back({"RsnaPredictWithoutAModel",
               [=](const fs::path& d) {
                 return program("iris-rsna") + " predict --series " + shell_quoted(d.string()) + " --output " +
                        shell_quoted((d / "submission.csv").string());
               },
               2, {"--model"}, {"submission.csv"}});
  r.push_back({"ImportWithoutAnOutput",
               [=](const fs::path&) {
                 return program("iris-import") + " " + shell_quoted(kRepo + "/tests/fixtures/mass_tiny/model.pt");
               },
               2, {"--output"}, {}});
  r.push_back({"InferPartOutOfRange",
               [=](const fs::path& d) {
                 return one_shot(kDemoModel, inputs().query, (d / "out.nii.gz").string()) + " --num-parts 2 --part-id 5";
               },
               2, {"usage error: --part-id"}, {"out.nii.gz"}});
  // 11. Limits of the file system are errors or work, never a kill or a leftover (#35).
  r.push_back({"FileSizeLimitMidWrite",
               [=](const fs::path& d) {
                 return "ulimit -f 200; " + program("iris-labels") + " resample --input /usr/share/mricron/templates/ch2.nii.gz" +
                        " --like /usr/share/mricron/templates/ch2.nii.gz --output " + shell_quoted((d / "big.nii").string());
               },
               3, {"big.nii", "File too large", "nothing was written"}, {"big.nii"}, 0, 4096, {},
               [](const fs::path& d) {
                 for (const auto& e : fs::directory_iterator(d))
                   EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
               }});
  r.push_back({"OutputNameOf250Bytes",
               [=](const fs::path& d) {
                 return one_shot(kDemoModel, inputs().query, (d / (std::string(243, 'n') + ".nii.gz")).string());
               },
               0, {}, {}, 0, 4096, {std::string(243, 'n') + ".nii.gz"}});
  r.push_back({"ContinueAfterKill9",
               [=](const fs::path& d) {
                 fs::create_directories(d / "qs");
                 fs::create_directories(d / "out");
                 fs::copy_file(inputs().query, d / "qs" / "a.nii.gz");
                 fs::copy_file(inputs().query, d / "qs" / "b.nii.gz");
                 iris::io::write_image(iris::io::read_labels(inputs().mask), (d / "out" / "a.nii.gz").string());
                 // What a run killed while writing b left an hour ago (pid 4194304 is above Linux's
                 // pid_max), and what an array task on another node is writing now (its pid means
                 // nothing here, its file is fresh): only the first is swept.
                 std::ofstream(d / "out" / ".b.tmp4194304_0.nii.gz") << "half";
                 fs::last_write_time(d / "out" / ".b.tmp4194304_0.nii.gz",
                                     fs::file_time_type::clock::now() - std::chrono::hours(1));
                 std::ofstream(d / "out" / ".c.tmp4194305_0.nii.gz") << "being written elsewhere";
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + shell_quoted(inputs().image) +
                        " --reference-mask " + shell_quoted(inputs().mask) + " --query " + shell_quoted((d / "qs").string()) +
                        " --output " + shell_quoted((d / "out").string()) + " --continue";
               },
               0, {}, {"out/.b.tmp4194304_0.nii.gz"}, 0, 4096,
               {"out/a.nii.gz", "out/b.nii.gz", "out/.c.tmp4194305_0.nii.gz"}});
  // A file that looks like a temporary name but whose "pid" no pid can be:
  // not iris', so kept (its 20 digits used to end the run with "stol").
  r.push_back({"TemporaryLookalikeWithA20DigitPid",
               [=](const fs::path& d) {
                 fs::create_directories(d / "qs");
                 fs::create_directories(d / "out");
                 fs::copy_file(inputs().query, d / "qs" / "a.nii.gz");
                 std::ofstream(d / "out" / ".x.tmp99999999999999999999_0.nii.gz") << "not ours";
                 return one_shot(kDemoModel, (d / "qs").string(), (d / "out").string());
               },
               0, {}, {}, 0, 4096, {"out/a.nii.gz", "out/.x.tmp99999999999999999999_0.nii.gz"}});
  r.push_back({"OutputFolderMissing",
               [=](const fs::path& d) {
                 fs::create_directories(d / "qs");
                 fs::copy_file(inputs().query, d / "qs" / "a.nii.gz");
                 fs::copy_file(inputs().query, d / "qs" / "b.nii.gz");
                 return infer + " --model " + shell_quoted(kDemoModel) + " --reference " + shell_quoted(inputs().image) +
                        " --reference-mask " + shell_quoted(inputs().mask) + " --query " + shell_quoted((d / "qs").string()) +
                        " --output " + shell_quoted((d / "new" / "out").string());
               },
               0, {}, {}, 0, 4096, {"new/out/a.nii.gz", "new/out/b.nii.gz"}});
#if IRIS_HAVE_YAML
  r.push_back({"YamlAliasBomb",
               [=](const fs::path& d) {
                 // Nine levels of ten aliases: 10^9 settings once expanded.
                 std::ofstream f(d / "bomb.yaml");
                 f << "bomb:\n  a0: &a0 {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}\n";
                 for (int level = 1; level < 9; ++level) {
                   f << "  a" << level << ": &a" << level << " {";
                   for (int k = 0; k < 10; ++k) f << (k ? ", " : "") << "k" << k << ": *a" << level - 1;
                   f << "}\n";
                 }
                 f.close();
                 return "ulimit -v 4000000; " + program("iris-train") + " " + shell_quoted((d / "bomb.yaml").string());
               },
               3, {"bomb.yaml", "more than 100000 settings", "aliases"}, {}});
  r.push_back({"YamlAliasRepeatingALongValue",
               [=](const fs::path& d) {
                 // One 4 MB string, aliased 2,000 times in a list and 2,000 times as values:
                 // 16 GB of settings from an 8 MB file.
                 std::ofstream f(d / "long.yaml");
                 f << "train:\n  note: &s \"" << std::string(4 << 20, 'x') << "\"\n  notes: [";
                 for (int i = 0; i < 2000; ++i) f << (i ? ", " : "") << "*s";
                 f << "]\nmore:\n";
                 for (int i = 0; i < 2000; ++i) f << "  k" << i << ": *s\n";
                 f.close();
                 return "ulimit -v 4000000; " + program("iris-train") + " " + shell_quoted((d / "long.yaml").string());
               },
               3, {"long.yaml", "more than 64 MB of settings", "aliases"}, {}});
#endif
#ifdef IRIS_HAVE_ITK
  // 4-5. DICOM: damaged slices are errors naming the slice; stray objects never abort.
  auto series_copy = [](const fs::path& d) {
    fs::create_directories(d / "series");
    for (const auto& e : fs::directory_iterator(kObliqueMr)) fs::copy_file(e.path(), d / "series" / e.path().filename());
    return d / "series";
  };
  const std::string preprocess = program("iris-preprocess");
  r.push_back({"MetaImageMissingHalfItsVoxels",
               [=](const fs::path& d) {
                 std::ofstream f(d / "half.mha", std::ios::binary);
                 f << "ObjectType = Image\nNDims = 3\nDimSize = 32 32 24\nElementType = MET_FLOAT\n"
                      "ElementSpacing = 2 2 2\nElementByteOrderMSB = False\nElementDataFile = LOCAL\n";
                 f << std::string(32 * 32 * 24 * 4 / 2, '\x01');
                 f.close();
                 return one_shot(kDemoModel, (d / "half.mha").string(), (d / "out.nii.gz").string());
               },
               3, {"half.mha", "truncated", "98304 bytes of voxels"}, {"out.nii.gz"}});
  r.push_back({"NrrdClaimingABillionVoxels",
               [=](const fs::path& d) {
                 std::ofstream f(d / "huge.nrrd", std::ios::binary);
                 f << "NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nencoding: gzip\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n";
                 f << std::string(470 * 1024, '\x1f');
                 f.close();
                 return one_shot(kDemoModel, (d / "huge.nrrd").string(), (d / "out.nii.gz").string());
               },
               3, {"huge.nrrd", "3814 MB of voxels", "the header is damaged"}, {"out.nii.gz"}});
  r.push_back({"DicomSliceTwice",
               [=](const fs::path& d) {
                 const fs::path s = series_copy(d);
                 fs::copy_file(s / "brain_005.dcm", s / "brain_005_copy.dcm");
                 return preprocess + " --input " + shell_quoted(s.string()) + " --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               3, {"two slices at one position", "duplicated slice"}, {"out.nii.gz"}});
  r.push_back({"DicomWithoutPixelSpacing",
               [=](const fs::path& d) {
                 const fs::path s = series_copy(d);
                 std::ofstream(d / "strip.py") << "import sys, glob, pydicom\n"
                                                  "for f in glob.glob(sys.argv[1] + '/*.dcm'):\n"
                                                  "    x = pydicom.dcmread(f)\n"
                                                  "    del x.PixelSpacing\n"
                                                  "    x.save_as(f)\n";
                 const auto r = iris::testing::run_program(iris::testing::kPython,
                                                           shell_quoted((d / "strip.py").string()) + " " + shell_quoted(s.string()),
                                                           (d / "strip.log").string());
                 EXPECT_EQ(r.exit_code, 0) << r.output;
                 return preprocess + " --input " + shell_quoted(s.string()) + " --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               3, {"has no PixelSpacing (0028,0030)", "iris does not guess 1 mm"}, {"out.nii.gz"}});
  r.push_back({"OutputInsideTheQueryFolder",
               [=](const fs::path& d) {
                 fs::create_directories(d / "series");
                 for (const auto& e : fs::directory_iterator(kObliqueMr)) fs::copy_file(e.path(), d / "series" / e.path().filename());
                 return one_shot(kDemoModel, (d / "series").string(), (d / "series" / "mask.nii.gz").string());
               },
               2, {"usage error: --output", "mask.nii.gz", "lies inside the query folder"}, {"series/mask.nii.gz"}});
  r.push_back({"DicomSliceCutInHalf",
               [=](const fs::path& d) {
                 const fs::path s = series_copy(d);
                 fs::resize_file(s / "brain_005.dcm", fs::file_size(s / "brain_005.dcm") / 2);
                 return preprocess + " --input " + shell_quoted(s.string()) + " --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               3, {"brain_005.dcm", "damaged slice"}, {"out.nii.gz"}});
  r.push_back({"DicomFolderOfOnlyStrayObjects",
               [=](const fs::path& d) {
                 fs::create_directories(d / "stray");
                 for (const std::string f : {"rtdose_1frame.dcm", "rtdose_rle_1frame.dcm", "dicomdirtests/DICOMDIR-nooffset"})
                   fs::copy_file(kPydicom + f, d / "stray" / fs::path(f).filename());
                 return preprocess + " --input " + shell_quoted((d / "stray").string()) + " --output " +
                        shell_quoted((d / "out.nii.gz").string());
               },
               3, {"holds no DICOM image series"}, {"out.nii.gz"}});
#endif
  return r;
}

class Catalogue : public ::testing::TestWithParam<Row> {};

}  // namespace

TEST_P(Catalogue, FailsCleanly) {
  const Row& row = GetParam();
  ASSERT_TRUE(fs::exists(kDemoModel)) << kDemoModel;
  std::unique_ptr<iris::testing::SmallDisk> disk;
  fs::path dir;
  if (row.disk_bytes > 0) {
    disk = std::make_unique<iris::testing::SmallDisk>("bad_input_disk", row.disk_bytes);
    ASSERT_TRUE(disk->mounted());
    dir = disk->path();
  } else {
    dir = iris::testing::temp_folder("bad_input_" + row.name);
  }
  const std::string command = row.command(dir);
  if (disk) disk->fill(row.disk_left);
  const fs::path log = iris::testing::temp_folder("bad_input_log") / "run.log";
  const auto r = iris::testing::run_program(command, "", log.string());
  EXPECT_EQ(r.exit_code, row.exit_code) << command << "\n" << r.output;
  for (const auto& w : row.words) EXPECT_NE(r.output.find(w), std::string::npos) << "'" << w << "' missing from:\n" << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Aborted"), std::string::npos) << r.output;
  for (const auto& a : row.absent) EXPECT_FALSE(fs::exists(dir / a)) << a << " exists after " << row.name;
  for (const auto& p : row.present) EXPECT_TRUE(fs::exists(dir / p)) << p << " is gone after " << row.name;
  if (row.check) row.check(dir);
  if (disk)
    for (const auto& name : disk->listing()) {
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << "temporary file left: " << name;
      EXPECT_EQ(name.find("partial"), std::string::npos) << "half-written folder left: " << name;
    }
  fs::remove_all(log.parent_path());
  if (!disk) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(BadInput, Catalogue, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });
