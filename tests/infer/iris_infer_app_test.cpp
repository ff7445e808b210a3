// The iris-infer program end to end: strategies, pools, tuning, post-
// processing, DICOM queries and bad input, run as a user would run it.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "support/inference_helpers.h"
#include "iris/io/dicom_seg.h"
#include "iris/io/image_io.h"
#include "iris/model/model_file.h"
#include "iris/model/task_embedding.h"

using namespace iris;
using namespace iris_test;

namespace {

const std::string kObliqueMr =
    iris::testing::kObliqueMr;

std::string binary() {
  const char* dir = std::getenv("IRIS_BIN_DIR");
  return std::string(dir ? dir : IRIS_BINARY_DIR) + "/iris-infer";
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct RunResult {
  int exit_code;
  std::string err;
};

RunResult run(const std::string& args) {
  const std::string err_path = temp_path("stderr.txt");
  const int status = std::system((binary() + " " + args + " > " + err_path + " 2>&1").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_text(err_path)};
}

struct App : ::testing::Test {
  static void SetUpTestSuite() {
    model = save_tiny_model(temp_path("tiny.iris"));
    for (int i = 0; i < 2; ++i) {
      auto [image, labels] = ball_and_box(24 + 4 * i, 40, 36, 10 + i);
      references[i] = temp_path("ref" + std::to_string(i) + ".nii.gz");
      masks[i] = temp_path("ref" + std::to_string(i) + "_mask.nii.gz");
      io::write_image(image, references[i]);
      labels.voxels = labels.voxels.to(torch::kByte);
      io::write_image(labels, masks[i]);
    }
    auto [q, unused] = ball_and_box(30, 44, 40, 20);
    query = temp_path("query.nii.gz");
    io::write_image(q, query);
  }
  static std::string reference_args(int n = 1) {
    std::string a;
    for (int i = 0; i < n; ++i) a += " --reference " + references[i] + " --reference-mask " + masks[i];
    return " --model " + model + a + " --preprocess zscore --quiet";
  }
  static inline std::string model, query, references[2], masks[2];
};

void expect_labels_within(const io::Image& labels, const std::vector<long>& allowed) {
  auto unique = std::get<0>(at::_unique(labels.voxels.reshape({-1})));
  for (long i = 0; i < unique.numel(); ++i) {
    const long v = unique[i].item<long>();
    EXPECT_TRUE(v == 0 || std::find(allowed.begin(), allowed.end(), v) != allowed.end()) << "label " << v;
  }
}

// Comparisons of two outputs mean something only when the outputs are not
// all background (or all foreground): the untrained tiny model must have
// labelled some voxels and left others.
void expect_not_vacuous(const io::Image& labels, const std::string& what) {
  const long labelled = labels.voxels.ne(0).sum().item<long>();
  EXPECT_GT(labelled, 0) << what << ": nothing labelled, so the comparison proves nothing";
  EXPECT_LT(labelled, labels.voxels.numel()) << what << ": everything labelled";
}

}  // namespace

TEST_F(App, EnsembleOfOneEqualsOneShot) {
  const std::string one = temp_path("one.nii.gz"), ens = temp_path("ens.nii.gz");
  ASSERT_EQ(run(reference_args() + " --query " + query + " --output " + one + " --window 32").exit_code, 0);
  const RunResult r = run(reference_args() + " --strategy ensemble --query " + query + " --output " + ens + " --window 32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_not_vacuous(io::read_labels(one), "one-shot");
  EXPECT_TRUE(torch::equal(io::read_labels(one).voxels, io::read_labels(ens).voxels));
}

TEST_F(App, ClassesPerPassMatchesOneRunPerLabel) {
  // A reference whose two classes lie 77 voxels apart: more than the tiny
  // model's 64-voxel window, so they cannot be encoded from one window.
  auto [image, labels] = ball_and_box(24, 40, 200, 30);
  const std::string far_ref = temp_path("far_ref.nii.gz"), far_mask = temp_path("far_ref_mask.nii.gz");
  io::write_image(image, far_ref);
  labels.voxels = labels.voxels.to(torch::kByte);
  io::write_image(labels, far_mask);
  const std::string common = " --model " + model + " --reference " + far_ref + " --reference-mask " + far_mask +
                             " --preprocess zscore --quiet --query " + query + " --window 32";
  const std::string joint = temp_path("joint.nii.gz"), grouped = temp_path("grouped.nii.gz"),
                    only1 = temp_path("only1.nii.gz"), only2 = temp_path("only2.nii.gz");
  RunResult r = run(common + " --output " + joint);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("extends over"), std::string::npos) << r.err;

  // Each class from its own window and decoder pass: where exactly one of the
  // single-label runs claims a voxel, the grouped run gives it that label;
  // where neither does, background.
  r = run(common + " --classes-per-pass 1 --output " + grouped);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(run(common + " --labels 1 --output " + only1).exit_code, 0);
  ASSERT_EQ(run(common + " --labels 2 --output " + only2).exit_code, 0);
  const at::Tensor g = io::read_labels(grouped).voxels, a = io::read_labels(only1).voxels.eq(1),
                   b = io::read_labels(only2).voxels.eq(2);
  // The untrained tiny model claims some voxels for each class alone, and
  // not everything: the comparison below is not vacuous.
  ASSERT_GT(a.logical_xor(b).sum().item<long>(), 0);
  ASSERT_GT(a.logical_or(b).logical_not().sum().item<long>(), 0);
  EXPECT_TRUE(torch::equal(g.eq(1).logical_and(b.logical_not()), a.logical_and(b.logical_not())));
  EXPECT_TRUE(torch::equal(g.eq(2).logical_and(a.logical_not()), b.logical_and(a.logical_not())));
  EXPECT_TRUE(torch::equal(g.eq(0), a.logical_or(b).logical_not()));

  r = run(common + " --classes-per-pass -1 --output " + grouped);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("classes-per-pass"), std::string::npos) << r.err;
  // Tuning in groups: each class tuned on a window around its own mask, so
  // the far-apart pair that cannot share one window tunes and segments.
  const std::string tuned = temp_path("grouped.task");
  r = run(common + " --strategy tuning --tune-steps 2 --output " + grouped);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("extends over"), std::string::npos) << r.err;
  r = run(common + " --classes-per-pass 1 --strategy tuning --tune-steps 2 --tuned-task-out " + tuned + " --output " +
          grouped);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(model::TaskEmbedding::load(tuned).labels, (std::vector<long>{1, 2}));
}

TEST_F(App, PoolRetrievalAndImageRetrieval) {
  const std::string pool = temp_path("cli_pool");
  RunResult r = run("pool" + reference_args(2) + " --output " + pool);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(pool + "/ref0.task"));
  EXPECT_TRUE(fs::exists(pool + "/ref1.features"));
  // A pool entry is an ordinary stored task too.
  EXPECT_EQ(model::TaskEmbedding::load(pool + "/ref1.task").labels, (std::vector<long>{1, 2}));

  for (const std::string strategy : {"retrieval", "image-retrieval"}) {
    const std::string out = temp_path(strategy + ".nii.gz"), report = temp_path(strategy + ".json");
    r = run(" --model " + model + " --strategy " + strategy + " --pool " + pool + " --preprocess zscore --quiet --query " +
            query + " --output " + out + " --report " + report + " --keep-largest --min-component-voxels 3");
    ASSERT_EQ(r.exit_code, 0) << strategy << ": " << r.err;
    const io::Image labels = io::read_labels(out);
    EXPECT_EQ(labels.voxels.sizes(), (at::IntArrayRef{30, 44, 40}));
    expect_labels_within(labels, {1, 2});
    expect_not_vacuous(labels, strategy);
    const auto json = nlohmann::json::parse(read_text(report));
    EXPECT_EQ(json["strategy"], strategy) << json.dump();
    EXPECT_TRUE(json.contains("retrieved")) << json.dump();
  }
  // Retrieval over the given references needs no stored pool; the default
  // strategy with --pool is retrieval.
  r = run(reference_args(2) + " --strategy retrieval --query " + query + " --output " + temp_path("r2.nii.gz"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(App, TuningStoresATaskAndWarnsAboutModalities) {
  const std::string tuned = temp_path("tuned.task"), report = temp_path("tuning.json"), out = temp_path("tuned.nii.gz");
  const RunResult r = run(reference_args(1) + " --strategy tuning --tune-steps 1 --tune-lr 0.01 --tuned-task-out " + tuned +
                    " --reference-modality CT --query-modality mr --query " + query + " --output " + out +
                    " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("query modality MR differs from the reference modality CT"), std::string::npos) << r.err;
  const auto task = model::TaskEmbedding::load(tuned);
  EXPECT_EQ(task.labels, (std::vector<long>{1, 2}));
  const auto json = nlohmann::json::parse(read_text(report));
  EXPECT_TRUE(json["tuning_losses"].is_array()) << json.dump();
  EXPECT_NE(json["warnings"].dump().find("differs from the reference modality"), std::string::npos) << json.dump();
  // The stored tuned task reproduces the tuned run's masks.
  const std::string again = temp_path("tuned_again.nii.gz");
  ASSERT_EQ(run(" --model " + model + " --task " + tuned + " --preprocess zscore --quiet --query " + query +
                " --output " + again).exit_code, 0);
  expect_not_vacuous(io::read_labels(out), "tuned");
  EXPECT_TRUE(torch::equal(io::read_labels(out).voxels, io::read_labels(again).voxels));
}

TEST_F(App, BadInputIsRefusedWithAReason) {
  RunResult r = run(reference_args() + " --labels 1,7 --query " + query + " --output " + temp_path("x.nii.gz"));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("label value(s) 7 not present"), std::string::npos) << r.err;

  io::Image empty = io::read_labels(masks[0]);
  empty.voxels = torch::zeros_like(empty.voxels).to(torch::kByte);
  const std::string empty_path = temp_path("empty_mask.nii.gz");
  io::write_image(empty, empty_path);
  r = run(" --model " + model + " --reference " + references[0] + " --reference-mask " + empty_path + " --query " +
          query + " --output " + temp_path("x.nii.gz") + " --preprocess zscore --quiet");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;

  r = run(reference_args() + " --strategy tuning --task " + temp_path("missing.task") + " --query " + query +
          " --output " + temp_path("x.nii.gz"));
  EXPECT_NE(r.exit_code, 0);
  r = run(" --model " + model + " --strategy retrieval --query " + query + " --output " + temp_path("x.nii.gz"));
  EXPECT_EQ(r.exit_code, 2);  // a flag that needs another one
  EXPECT_NE(r.err.find("--pool"), std::string::npos) << r.err;
}

TEST_F(App, QueryLargerThanTheWindowIsWindowed) {
  auto [big, unused] = ball_and_box(80, 33, 70, 30);
  const std::string big_path = temp_path("big.nii.gz"), out = temp_path("big_out.nii.gz");
  io::write_image(big, big_path);
  const RunResult r = run(reference_args() + " --query " + big_path + " --output " + out + " --overlap 0.25");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(io::read_labels(out).voxels.sizes(), (at::IntArrayRef{80, 33, 70}));
}

// The one test that reads the oblique MR series (tools/make_test_fixtures.py): masks come out on
// the DICOM grid, and its Modality tag (MR) is checked against the reference's.
#ifdef IRIS_HAVE_ITK  // DICOM needs the ITK build
TEST_F(App, DicomQueryGivesMasksOnTheDicomGrid) {
  ASSERT_TRUE(fs::exists(kObliqueMr)) << "test data missing: run scripts/setup.sh";
  const std::string out = temp_path("dicom_mask.nii.gz"), report = temp_path("dicom.json");
  const std::string seg = temp_path("dicom_mask.dcm");
  const RunResult r = run(reference_args() + " --reference-modality CT --query " + kObliqueMr + " --output " + out +
                    " --overlap 0 --report " + report + " --dicom-seg " + seg);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("query modality MR differs"), std::string::npos) << r.err;
  const io::Image labels = io::read_labels(out);
  EXPECT_EQ(labels.voxels.sizes(), (at::IntArrayRef{20, 256, 256}));
  expect_labels_within(labels, {1, 2});
  expect_not_vacuous(labels, "DICOM query");
  // The grid of tests/io/dicom_itk_test.cpp (from gdcmdump of the headers).
  const auto& g = labels.geometry;
  EXPECT_NEAR(g.spacing[0], 0.859375, 1e-5);
  EXPECT_NEAR(g.spacing[1], 0.859375, 1e-5);
  EXPECT_NEAR(g.spacing[2], 7.0005, 1e-3);
  EXPECT_NEAR(g.origin[0], -110.5, 1e-3);
  EXPECT_NEAR(g.origin[1], -78.3063, 1e-3);
  EXPECT_NEAR(g.origin[2], -72.7575, 1e-3);
  EXPECT_NEAR(g.direction[4], 0.990960, 1e-5);  // the oblique column direction, y
  EXPECT_NEAR(g.direction[7], 0.134158, 1e-5);  // and z
  EXPECT_FALSE(nlohmann::json::parse(read_text(report))["warnings"].empty());
  // --dicom-seg: the same masks as a DICOM-SEG referencing the series.
  ASSERT_TRUE(fs::exists(seg)) << r.err;
  const io::DicomSeg read_back = io::read_dicom_seg(seg, &labels.geometry);
  EXPECT_TRUE(torch::equal(read_back.labels.voxels, labels.voxels.to(torch::kInt)));
}

// A PACS-like export: the oblique MR series and pydicom's small study (three
// one-image CR series and a 4-slice CT) in sub-folders, plus a stray file.
TEST_F(App, AStudyFolderIsSplitIntoSeriesFilteredAndMirrored) {
  const std::string pydicom_study = "/usr/lib/python3/dist-packages/pydicom/data/test_files/dicomdirtests/77654033";
  ASSERT_TRUE(fs::exists(kObliqueMr)) << "test data missing: run scripts/setup.sh";
  ASSERT_TRUE(fs::exists(pydicom_study)) << "test data missing: run scripts/setup.sh";
  const fs::path study = temp_path("study"), out = temp_path("study_out"), segs = temp_path("study_segs");
  fs::remove_all(study);
  for (const auto& d : {study / "mr", study / "pacs", out, segs}) fs::create_directories(d);
  fs::copy(kObliqueMr, study / "mr", fs::copy_options::recursive);
  fs::copy(pydicom_study, study / "pacs", fs::copy_options::recursive);
  std::ofstream(study / "notes.txt") << "exported by a PACS";
  const std::string report = temp_path("study.json");
  const std::string args = reference_args() + " --query " + study.string() + " --output " + out.string() +
                           " --dicom-seg " + segs.string() + " --series-filter modality=MR --overlap 0 --report " + report;
  RunResult r = run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string uid = "1.2.826.0.1.3680043.8.498.7770001.1";  // make_test_fixtures.py
  const io::Image labels = io::read_labels((out / "mr" / (uid + ".nii.gz")).string());
  EXPECT_EQ(labels.voxels.sizes(), (at::IntArrayRef{20, 256, 256}));
  EXPECT_TRUE(fs::exists(segs / "mr" / (uid + ".dcm")));
  const auto json = nlohmann::json::parse(read_text(report));
  std::string reasons;
  for (const auto& s : json["skipped"]) reasons += s["input"].get<std::string>() + ": " + s["reason"].get<std::string>() + "\n";
  EXPECT_NE(reasons.find("1 slice(s): not a volume"), std::string::npos) << reasons;  // the CRs
  EXPECT_NE(reasons.find("modality CT, not MR"), std::string::npos) << reasons;
  EXPECT_NE(reasons.find("notes.txt"), std::string::npos) << reasons;
  // Nothing is overwritten silently; --continue finds the series done.
  r = run(args);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  r = run(args + " --continue");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(nlohmann::json::parse(read_text(report))["skipped"].dump().find("finished"), std::string::npos);
}

// A SeriesInstanceUID is text from a file: one of "../../escape" names its
// output inside --output (a safe stand-in, reported), never a path above it.
TEST_F(App, ASeriesUidThatIsAPathStaysInsideTheOutputFolder) {
  ASSERT_TRUE(fs::exists(kObliqueMr)) << "test data missing: run scripts/setup.sh";
  const fs::path root = temp_path("uid_escape");
  fs::remove_all(root);
  const fs::path study = root / "study", out = root / "a" / "b" / "out";
  fs::create_directories(study / "one");
  fs::create_directories(study / "two");
  fs::copy(kObliqueMr, study / "one", fs::copy_options::recursive);
  fs::copy(kObliqueMr, study / "two", fs::copy_options::recursive);
  std::ofstream(root / "edit.py") << "import sys, glob, pydicom\n"
                                     "for f in glob.glob(sys.argv[1] + '/*.dcm'):\n"
                                     "    d = pydicom.dcmread(f)\n"
                                     "    d.SeriesInstanceUID = sys.argv[2]\n"
                                     "    d.save_as(f)\n";
  const auto edit = iris::testing::run_program(
      iris::testing::kPython, (root / "edit.py").string() + " " + (study / "two").string() + " ../../escape",
      (root / "edit.log").string());
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  const RunResult r = run(reference_args() + " --query " + study.string() + " --output " + out.string() +
                          " --overlap 0 --verbose");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> written;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path().string().find(".nii.gz") != std::string::npos)
      written.push_back(e.path().lexically_relative(root).string());
  ASSERT_EQ(written.size(), 2u);
  for (const auto& w : written) EXPECT_EQ(w.rfind("a/b/out/", 0), 0u) << w << " lies outside --output";
  EXPECT_NE(r.err.find("is not a safe file name"), std::string::npos) << r.err;
}
#endif

// A folder of queries into an output folder that does not exist yet (SLURM
// array jobs): the folder is made, and each finished case says its place,
// the rate and the time left.
TEST_F(App, AFolderRunMakesItsOutputFolderAndCountsItsCases) {
  const fs::path in = temp_path("count_in"), out = temp_path("count_out");
  fs::remove_all(in);
  fs::remove_all(out);
  fs::create_directories(in);
  fs::copy_file(query, in / "q1.nii.gz");
  fs::copy_file(references[0], in / "q2.nii.gz");
  const RunResult r = run(" --model " + model + " --reference " + references[0] + " --reference-mask " + masks[0] +
                          " --preprocess zscore --window 32 --query " + in.string() + " --output " + (out / "a" / "b").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "a" / "b" / "q1.nii.gz"));
  EXPECT_TRUE(fs::exists(out / "a" / "b" / "q2.nii.gz"));
  for (const char* words : {"case 1/2 (", "case 2/2 (", "s/case, ETA "})
    EXPECT_NE(r.err.find(words), std::string::npos) << words << " in\n" << r.err;
}

// --help: the ~50 flags in groups, defaults shown, examples at the end, no
// parser artefacts.
TEST_F(App, HelpGroupsTheFlagsAndShowsDefaults) {
  const RunResult r = run("--help");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* words : {"Input:", "Task:", "Strategy:", "Preprocessing and windows:", "Output:", "Performance:",
                            "Examples:", "--overlap FLOAT:[0 - 0.95]=0.5", "--threshold FLOAT:[0 - 1]=0.5",
                            "--no-skull-strip", "--tune-steps"})
    EXPECT_NE(r.err.find(words), std::string::npos) << words << " in\n" << r.err;
  EXPECT_EQ(r.err.find("{false}"), std::string::npos) << r.err;
  // Only help and verbosity are left outside the named groups.
  const std::string general = r.err.substr(r.err.find("Options:"), r.err.find("Task:") - r.err.find("Options:"));
  long flags = 0;
  for (size_t at = general.find("\n  -"); at != std::string::npos; at = general.find("\n  -", at + 1)) ++flags;
  EXPECT_EQ(flags, 3) << general;  // -h, --quiet, --verbose
}

TEST_F(App, ThresholdDecidesWhichVoxelsAClassClaims) {
  const std::string all = temp_path("t0.nii.gz"), none = temp_path("t1.nii.gz"), mid = temp_path("t5.nii.gz");
  ASSERT_EQ(run(reference_args() + " --query " + query + " --window 32 --threshold 0 --output " + all).exit_code, 0);
  ASSERT_EQ(run(reference_args() + " --query " + query + " --window 32 --threshold 1 --output " + none).exit_code, 0);
  ASSERT_EQ(run(reference_args() + " --query " + query + " --window 32 --output " + mid).exit_code, 0);
  const at::Tensor a = io::read_labels(all).voxels, n = io::read_labels(none).voxels, m = io::read_labels(mid).voxels;
  EXPECT_TRUE(a.ne(0).all().item<bool>()) << "threshold 0: every voxel goes to its most probable class";
  EXPECT_FALSE(n.ne(0).any().item<bool>()) << "threshold 1: a sigmoid never reaches it";
  // The default 0.5 keeps the 0 run's class where it labels at all.
  EXPECT_TRUE(torch::equal(m.ne(0).logical_and(m.ne(a)).any(), torch::tensor(false)));
  EXPECT_NE(run(reference_args() + " --query " + query + " --threshold 1.5 --output " + mid).exit_code, 0);
}

TEST_F(App, ProbabilitiesAreWrittenPerCaseAndAgreeWithTheLabels) {
  const std::string labels = temp_path("p_labels.nii.gz"), probs = temp_path("p_probs.nii.gz");
  RunResult r = run(reference_args() + " --query " + query + " --window 32 --output " + labels + " --probabilities " + probs);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const at::Tensor p = read_probabilities(probs), l = io::read_labels(labels).voxels;
  ASSERT_EQ(p.sizes(), (at::IntArrayRef{2, 30, 44, 40}));
  EXPECT_GE(p.min().item<float>(), 0.0f);
  EXPECT_LE(p.max().item<float>(), 1.0f);
  // Label = most probable class where that probability is >= 0.5, else 0:
  // counted here from the probabilities file.
  auto [best, index] = p.max(0);
  const at::Tensor expected = at::where(best.ge(0.5), index.to(at::kInt) + 1, at::zeros_like(index, at::kInt));
  EXPECT_TRUE(torch::equal(l, expected));
  expect_not_vacuous(io::read_labels(labels), "labels");

  // A folder of queries: one probability file per case in a folder.
  const fs::path in = temp_path("p_in"), out = temp_path("p_out"), pdir = temp_path("p_dir");
  for (const auto& d : {in, out, pdir}) fs::create_directories(d);
  fs::copy_file(query, in / "q1.nii.gz", fs::copy_options::overwrite_existing);
  fs::copy_file(references[0], in / "q2.nii.gz", fs::copy_options::overwrite_existing);
  r = run(reference_args() + " --query " + in.string() + " --window 32 --output " + out.string() + " --probabilities " +
          pdir.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_probabilities((pdir / "q1.nii.gz").string()).size(1), 30);
  EXPECT_EQ(read_probabilities((pdir / "q2.nii.gz").string()).size(1), 24);
  r = run(reference_args() + " --query " + in.string() + " --output " + out.string() + " --probabilities " + probs);
  EXPECT_EQ(r.exit_code, 2);  // a file where a folder is needed: the flag
  EXPECT_NE(r.err.find("--probabilities"), std::string::npos) << r.err;
}

// A damaged query among good ones: reported and skipped, the others done,
// the exit status says some failed, nothing written under its name.
TEST_F(App, ADamagedQueryIsReportedAndTheOthersAreDone) {
  const fs::path in = temp_path("f_in"), out = temp_path("f_out");
  fs::remove_all(in);
  fs::remove_all(out);
  for (const auto& d : {in, out}) fs::create_directories(d);
  fs::copy_file(query, in / "a.nii.gz");
  fs::copy_file(query, in / "b.nii.gz");
  fs::resize_file(in / "b.nii.gz", fs::file_size(in / "b.nii.gz") / 2);  // cut short
  fs::copy_file(references[0], in / "c.nii.gz");
  const std::string report = temp_path("f_report.json");
  const RunResult r =
      run(reference_args() + " --query " + in.string() + " --window 32 --output " + out.string() + " --report " + report);
  EXPECT_EQ(r.exit_code, 4) << r.err;  // some failed, the rest done (docs/cli.md)
  EXPECT_NE(r.err.find("1 of 3 queries failed"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out / "a.nii.gz"));
  EXPECT_TRUE(fs::exists(out / "c.nii.gz"));
  EXPECT_FALSE(fs::exists(out / "b.nii.gz"));
  const auto json = nlohmann::json::parse(read_text(report));
  ASSERT_EQ(json["failed"].size(), 1u) << json.dump();
  EXPECT_EQ(json["failed"][0]["case"], "b");
  EXPECT_NE(json["failed"][0]["error"].get<std::string>().find("b.nii.gz"), std::string::npos) << json.dump();
  // One query alone: its error is the run's (bad input, exit 3).
  const RunResult one = run(reference_args() + " --query " + (in / "b.nii.gz").string() + " --window 32 --output " +
                            (out / "one.nii.gz").string());
  EXPECT_EQ(one.exit_code, 3) << one.err;
}

TEST_F(App, MemoryBankClassesByName) {
  model::IrisModel m = model::load_model(model);
  m.class_names = {"ball", "box"};
  const std::string named = temp_path("named.iris"), out = temp_path("bank.nii.gz"), report = temp_path("bank.json");
  model::save_model(m, named);
  RunResult r = run(" --model " + named + " --classes box,ball --preprocess zscore --quiet --window 32 --query " + query +
                    " --output " + out + " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_labels_within(io::read_labels(out), {1, 2});
  const auto json = nlohmann::json::parse(read_text(report));
  EXPECT_EQ(json["strategy"], "memory-bank");
  EXPECT_EQ(json["classes"], 2);
  r = run(" --model " + named + " --classes liver --preprocess zscore --quiet --query " + query + " --output " + out);
  EXPECT_EQ(r.exit_code, 2);  // --classes names a class the model lacks
  EXPECT_NE(r.err.find("liver"), std::string::npos) << r.err;
}

TEST_F(App, MirroringChangesTheUntrainedModelsProbabilities) {
  const std::string plain = temp_path("m0.nii.gz"), tta = temp_path("m1.nii.gz");
  ASSERT_EQ(run(reference_args() + " --query " + query + " --window 32 --output " + temp_path("m.nii.gz") +
                " --probabilities " + plain).exit_code, 0);
  // A model trained without mirroring refuses --tta (exit 2, a flag that does not fit).
  RunResult r = run(reference_args() + " --query " + query + " --window 32 --tta --output " + temp_path("m2.nii.gz"));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("not trained with mirror augmentation"), std::string::npos) << r.err;
  // The same weights, recorded as trained mirror-invariant along x, y and z.
  model::IrisModel m = model::load_model(model);
  m.mirror_axes = "xyz";
  const std::string mirrored = temp_path("tiny_mirrored.iris");
  model::save_model(m, mirrored);
  r = run(" --model " + mirrored + " --reference " + references[0] + " --reference-mask " + masks[0] +
          " --preprocess zscore --quiet --query " + query + " --window 32 --tta --output " + temp_path("m2.nii.gz") +
          " --probabilities " + tta);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The arithmetic of mirroring is checked in segmenter_test; here the flag
  // must reach it.
  EXPECT_GT((read_probabilities(plain) - read_probabilities(tta)).abs().max().item<float>(), 1e-4);
}

TEST_F(App, WindowBatchTakesAutoAndFastNeedsAStoredFastSpacing) {
  const std::string a = temp_path("wb1.nii.gz"), b = temp_path("wb_auto.nii.gz"), report = temp_path("wb.json");
  ASSERT_EQ(run(reference_args() + " --query " + query + " --window 32 --output " + a).exit_code, 0);
  RunResult r = run(reference_args() + " --query " + query + " --window 32 --window-batch auto --output " + b +
                    " --report " + report);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(at::equal(io::read_labels(a).voxels, io::read_labels(b).voxels));
  EXPECT_EQ(nlohmann::json::parse(read_text(report))["window_batch"], 1);  // the CPU
  r = run(reference_args() + " --query " + query + " --window-batch many --output " + temp_path("wb_x.nii.gz"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--window-batch"), std::string::npos) << r.err;
  // The test model stores no fast spacing.
  r = run(reference_args() + " --query " + query + " --fast --output " + temp_path("wb_fast.nii.gz"));
  EXPECT_EQ(r.exit_code, 2) << r.err;  // a flag the model cannot honour
  EXPECT_NE(r.err.find("--fast"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(temp_path("wb_fast.nii.gz")));
}

// The Segmenter's flags are declared once (apps/common/segmenter_options.h):
// iris-infer and iris-rsna predict describe and check each of them alike.
TEST(SegmenterFlags, IrisInferAndIrisRsnaPredictDeclareThemAlike) {
  const std::string rsna = binary().substr(0, binary().size() - std::string("iris-infer").size()) + "iris-rsna";
  const std::string infer_help = iris::testing::run_program(binary(), "--help", temp_path("infer_help.txt")).output;
  const std::string rsna_help = iris::testing::run_program(rsna, "predict --help", temp_path("rsna_help.txt")).output;
  // An option's help entry: from its name to the next option.
  auto entry = [](const std::string& help, const std::string& flag) {
    const size_t at = help.find("  " + flag + " ");
    if (at == std::string::npos) return std::string("(missing)");
    const size_t next = help.find("\n  --", at + 1);
    return help.substr(at, next == std::string::npos ? std::string::npos : next - at);
  };
  // (--reference-mask, --labels and --task say what a label means in each program.)
  for (const char* flag : {"--model", "--reference", "--max-labels", "--preprocess", "--classes-per-pass", "--device",
                           "--threads", "--model-weights", "--window", "--overlap", "--window-batch", "--bf16"}) {
    EXPECT_NE(entry(infer_help, flag), "(missing)") << flag;
    EXPECT_EQ(entry(infer_help, flag), entry(rsna_help, flag)) << flag;
  }
  // One check for each: --window-batch auto and a bad --preprocess alike.
  for (const std::string& program : {binary(), rsna + " predict --series x --output y.csv"}) {
    const int bad = std::system((program + " --model m.iris --preprocess nonsense > /dev/null 2>&1").c_str());
    EXPECT_EQ(WEXITSTATUS(bad), 2) << program;
    const int negative = std::system((program + " --model m.iris --window-batch -1 > /dev/null 2>&1").c_str());
    EXPECT_EQ(WEXITSTATUS(negative), 2) << program;
  }
}
