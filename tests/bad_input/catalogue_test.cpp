// The catalogue of bad inputs and faults: one row per case a hostile or
// unlucky user met, run through the real programs. Each row gives the
// command, the exit code it must end with (docs/cli.md: 2 usage, 3 bad input
// or failed write, never a crash), words the error must contain, and paths
// that must not exist afterwards (no output, no temporary file, no sign of
// code having run). Rows of what only the ITK build reads are registered
// there alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include <ATen/ATen.h>

#include "iris/io/image_io.h"
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

struct Row {
  std::string name;
  // Prepares the case in `dir` (a fresh folder, or the full disk for disk rows) and returns the command line.
  std::function<std::string(const fs::path& dir)> command;
  int exit_code;
  std::vector<std::string> words;
  std::vector<std::string> absent;  // relative to dir
  long disk_bytes = 0;              // > 0: dir is a full tmpfs of this size
  long disk_left = 4096;            // bytes left free on it
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
                        " --output " + shell_quoted((d / "model.iris").string());
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
               3, {"--map", "range 5-1", "is empty"}, {"out.nii.gz"}});
  r.push_back({"ThresholdNan",
               [=](const fs::path& d) {
                 return program("iris-labels") + " threshold --input " + shell_quoted(inputs().image) +
                        " --above nan --output " + shell_quoted((d / "out.nii.gz").string());
               },
               2, {"--above", "not a finite number"}, {"out.nii.gz"}});
  r.push_back({"NegativeQueries", [=](const fs::path&) { return program("iris-bench") + " --queries -1"; }, 2,
               {"--queries"}, {}});
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
#ifdef IRIS_HAVE_ITK
  // 4-5. DICOM: damaged slices are errors naming the slice; stray objects never abort.
  auto series_copy = [](const fs::path& d) {
    fs::create_directories(d / "series");
    for (const auto& e : fs::directory_iterator(kObliqueMr)) fs::copy_file(e.path(), d / "series" / e.path().filename());
    return d / "series";
  };
  const std::string preprocess = program("iris-preprocess");
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
