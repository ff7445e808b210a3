// infer::Segmenter, the query pipeline as a library object: its result is
// the composition of the pipeline's steps, folders of queries give what one
// query at a time gives, probabilities come only when asked and on the
// query's grid, mirroring is the mean of the mirrored passes, and errors of
// the reader or writer thread reach the caller.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <torch/torch.h>

#include "support/inference_helpers.h"
#include "support/test_support.h"
#include "iris/common/config_map.h"
#include "iris/common/error.h"
#include "iris/infer/reference.h"
#include "iris/infer/segmenter.h"
#include "iris/infer/sliding_window.h"
#include "iris/io/preprocess.h"

using namespace iris;
using namespace iris_test;
using iris::testing::error_of;

namespace {

struct SegmenterTest : ::testing::Test {
  static void SetUpTestSuite() {
    model = save_tiny_model(temp_path("segmenter_tiny.iris"));
    auto [image, labels] = ball_and_box(24, 40, 36, 1);
    reference = temp_path("seg_ref.nii.gz");
    mask = temp_path("seg_ref_mask.nii.gz");
    io::write_image(image, reference);
    labels.voxels = labels.voxels.to(torch::kByte);
    io::write_image(labels, mask);
  }
  static infer::TaskSpec one_shot() {
    infer::TaskSpec t;
    t.references = {reference};
    t.reference_masks = {mask};
    return t;
  }
  static infer::SegmenterOptions zscore(long window = 32) {
    infer::SegmenterOptions o;
    o.preprocess = "zscore";
    o.window = window;
    o.warn = [](const std::string&) {};
    return o;
  }
  static inline std::string model, reference, mask;
};

long labelled(const io::Image& labels) { return labels.voxels.ne(0).sum().item<long>(); }

}  // namespace

TEST_F(SegmenterTest, OneQueryIsTheCompositionOfThePipelineSteps) {
  infer::Segmenter segmenter(model, one_shot(), zscore());
  EXPECT_EQ(segmenter.strategy(), "one-shot");
  auto [q, unused] = ball_and_box(30, 44, 40, 2);
  q.geometry.spacing = {0.9, 1.1, 1.3};
  q.geometry.origin = {-5, 7, 11};
  const infer::Segmentation s = segmenter.segment(q);
  // The same steps by hand, from the model file.
  model::IrisModel m = model::load_model(model);
  m.net->eval();
  const model::TaskEmbedding task = infer::encode_reference(*m.net, io::read_image(reference), io::read_labels(mask),
                                                            {1, 2}, "zscore", c10::kCPU, m.fingerprint);
  infer::SlidingWindowOptions w;
  w.window = 32;
  const at::Tensor probs = infer::sliding_window_probabilities(*m.net, io::normalise_intensity(q.voxels, "zscore"), task, w);
  const at::Tensor expected = infer::labels_from_probabilities(probs, {1, 2}, 0.5);
  EXPECT_TRUE(torch::equal(s.labels.voxels.to(at::kInt), expected));
  EXPECT_GT(labelled(s.labels), 0);
  EXPECT_LT(labelled(s.labels), s.labels.voxels.numel());
  EXPECT_EQ(s.labels.voxels.scalar_type(), at::kByte);
  EXPECT_EQ(s.labels.geometry.spacing, q.geometry.spacing);
  EXPECT_EQ(s.labels.geometry.origin, q.geometry.origin);
  EXPECT_EQ(s.label_values, (std::vector<long>{1, 2}));
  EXPECT_FALSE(s.probabilities.has_value()) << "probabilities only when asked";
}

TEST_F(SegmenterTest, AFolderOfQueriesGivesWhatOneQueryAtATimeGives) {
  const fs::path in = temp_path("seg_queries"), out = temp_path("seg_out"), prob = temp_path("seg_prob");
  for (const auto& d : {in, out, prob}) fs::create_directories(d);
  std::vector<io::Image> queries;
  for (int i = 0; i < 3; ++i) {
    auto [q, unused] = ball_and_box(28 + 2 * i, 40, 36, 10 + i);
    io::write_image(q, (in / ("case" + std::to_string(i) + ".nii.gz")).string());
    queries.push_back(q);
  }
  std::ofstream(in / "notes.txt") << "not an image";  // ignored
  infer::PlanOptions plan;
  plan.probabilities = prob.string();
  const auto jobs = infer::plan_queries(in.string(), out.string(), plan);
  ASSERT_EQ(jobs.size(), 3u);
  EXPECT_EQ(jobs[1].output, (out / "case1.nii.gz").string());
  EXPECT_EQ(jobs[1].probabilities, (prob / "case1.nii.gz").string());  // one file per case, not one for all

  auto options = zscore();
  options.probabilities = true;
  infer::Segmenter segmenter(model, one_shot(), options);
  std::vector<std::string> done;
  segmenter.segment_files(jobs, {}, [&](const infer::QueryJob& j) { done.push_back(j.input); });
  ASSERT_EQ(done.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(done[i], jobs[i].input);  // in order
    const infer::Segmentation one = segmenter.segment(io::read_image(jobs[i].input));
    EXPECT_TRUE(torch::equal(io::read_labels(jobs[i].output).voxels, one.labels.voxels.to(at::kInt))) << i;
    const at::Tensor p = read_probabilities(jobs[i].probabilities);
    ASSERT_EQ(p.dim(), 4);
    EXPECT_EQ(p.size(0), 2);  // K classes
    EXPECT_TRUE(torch::allclose(p, one.probabilities->voxels, 1e-6, 1e-6)) << i;
  }
  const Json report = segmenter.report();
  EXPECT_EQ(report["strategy"], "one-shot");
  EXPECT_TRUE(report["seconds"].contains("network"));
  EXPECT_TRUE(report["seconds"].contains("read"));
  EXPECT_TRUE(report["seconds"].contains("write"));
}

TEST_F(SegmenterTest, ProbabilitiesComeBackOnTheQueryGridThroughTheModelsPreprocessing) {
  // A model whose stored preprocessing resamples to 2 mm: labels and
  // probabilities are inverted onto the query's own 1 mm grid.
  model::IrisModel m = model::load_model(model);
  m.preprocess = "spacing: [2, 2, 2]\nintensity: zscore\n";
  const std::string resampling = temp_path("segmenter_2mm.iris");
  model::save_model(m, resampling);
  auto options = zscore(32);
  options.preprocess = "model";
  options.probabilities = true;
  infer::Segmenter segmenter(resampling, one_shot(), options);
  auto [q, unused] = ball_and_box(40, 48, 44, 3);
  const infer::Segmentation s = segmenter.segment(q);
  EXPECT_EQ(s.labels.voxels.sizes(), q.voxels.sizes());
  ASSERT_TRUE(s.probabilities.has_value());
  EXPECT_EQ(s.probabilities->voxels.sizes(), (at::IntArrayRef{2, 40, 48, 44}));
  // Labels (nearest) and probabilities (linear) are inverted separately, so
  // they differ at edges; inside a class its probability is high on average
  // and higher than outside.
  long checked = 0;
  for (long k = 0; k < 2; ++k) {
    const at::Tensor in_class = s.labels.voxels.eq(k + 1);
    if (!in_class.any().item<bool>() || in_class.all().item<bool>()) continue;
    const at::Tensor p = s.probabilities->voxels[k];
    const double inside = p.masked_select(in_class).mean().item<double>();
    const double outside = p.masked_select(~in_class).mean().item<double>();
    EXPECT_GT(inside, 0.5) << "class " << k + 1;
    EXPECT_GT(inside, outside) << "class " << k + 1;
    ++checked;
  }
  EXPECT_GT(checked, 0) << "the untrained model labelled nothing: the check above is vacuous";

  // --smooth-labels: the labels are those of the inverted probabilities,
  // counted here from them (most probable class where it reaches 0.5).
  options.smooth_labels = true;
  infer::Segmenter smooth(resampling, one_shot(), options);
  const infer::Segmentation ss = smooth.segment(q);
  EXPECT_TRUE(at::equal(ss.probabilities->voxels, s.probabilities->voxels));
  auto [best, index] = ss.probabilities->voxels.max(0);
  const at::Tensor expected = at::where(best.ge(0.5), index + 1, at::zeros_like(index));
  EXPECT_TRUE(at::equal(ss.labels.voxels.to(at::kLong), expected));
  EXPECT_GT(ss.labels.voxels.ne(s.labels.voxels).sum().item<long>(), 0) << "nearest and smooth labels never differ";
}

TEST_F(SegmenterTest, FastRunsAtTheModelsStoredFastSpacingOrIsRefused) {
  // --fast on a model storing fast_spacing 3 mm is that model with spacing
  // 3 mm: the same labels, on the query's own grid.
  model::IrisModel m = model::load_model(model);
  m.preprocess = "spacing: [1.5, 1.5, 1.5]\nfast_spacing: [3, 3, 3]\nintensity: zscore\n";
  const std::string with_fast = temp_path("segmenter_fast.iris");
  model::save_model(m, with_fast);
  m.preprocess = "spacing: [3, 3, 3]\nintensity: zscore\n";
  const std::string at_3mm = temp_path("segmenter_3mm.iris");
  model::save_model(m, at_3mm);
  auto options = zscore(32);
  options.preprocess = "model";
  auto [q, unused] = ball_and_box(40, 48, 44, 3);
  const infer::Segmentation slow = infer::Segmenter(with_fast, one_shot(), options).segment(q);
  const infer::Segmentation coarse = infer::Segmenter(at_3mm, one_shot(), options).segment(q);
  options.fast = true;
  infer::Segmenter fast_segmenter(with_fast, one_shot(), options);
  const infer::Segmentation fast = fast_segmenter.segment(q);
  EXPECT_EQ(fast.labels.voxels.sizes(), q.voxels.sizes());
  EXPECT_TRUE(at::equal(fast.labels.voxels, coarse.labels.voxels));
  EXPECT_GT(labelled(fast.labels), 0);
  EXPECT_GT(fast.labels.voxels.ne(slow.labels.voxels).sum().item<long>(), 0) << "--fast changed nothing";
  EXPECT_EQ(fast_segmenter.report()["fast"], true);
  // A model without a fast spacing, and an intensity-only run, are refused
  // naming the setting (the library names no program's flags).
  std::string e = error_of([&] { infer::Segmenter(at_3mm, one_shot(), options); });
  EXPECT_EQ(e.rfind("fast: ", 0), 0u) << e;
  EXPECT_EQ(e.find("--"), std::string::npos) << e;
  EXPECT_NE(e.find("fast_spacing"), std::string::npos) << e;
  options.preprocess = "zscore";
  e = error_of([&] { infer::Segmenter(with_fast, one_shot(), options); });
  EXPECT_EQ(e, "fast: runs at the model's stored fast spacing: it needs preprocess model");
  // A fast spacing finer than the spacing is a config error.
  e = error_of([] {
    io::PreprocessConfig::from_config(ConfigMap::parse_text("spacing: 2\nfast_spacing: [3, 1, 3]\n", "test"));
  });
  EXPECT_NE(e.find("preprocess.fast_spacing"), std::string::npos) << e;
}

TEST_F(SegmenterTest, AutoWindowBatchIsOneOnTheCpuAndSaysSo) {
  auto options = zscore(16);
  auto [q, unused] = ball_and_box(30, 44, 40, 2);
  const infer::Segmentation one = infer::Segmenter(model, one_shot(), options).segment(q);
  options.window_batch = 0;  // auto
  infer::Segmenter automatic(model, one_shot(), options);
  EXPECT_EQ(automatic.report()["window_batch"], 0) << "not sized before the first query";
  const infer::Segmentation s = automatic.segment(q);
  EXPECT_TRUE(at::equal(s.labels.voxels, one.labels.voxels));
  const Json report = automatic.report();
  EXPECT_EQ(report["window_batch"], 1);
  ASSERT_TRUE(report.contains("window_batch_auto"));
  EXPECT_NE(report["window_batch_auto"][0].get<std::string>().find("1 window per call on cpu"), std::string::npos)
      << report["window_batch_auto"];
  // Blended in host memory on the CPU, whatever was asked.
  EXPECT_EQ(report["stitching"], "auto");
  EXPECT_EQ(report["stitched_on"], Json::array({"host"}));
}

TEST_F(SegmenterTest, MirroringIsTheMeanOfTheMirroredPassesAlongTheModelsAxes) {
  // One 32^3 window covers the query, so mirroring the query mirrors the
  // window: the flipped passes are computed here without TTA and averaged.
  // A model trained mirror-invariant along x, y and z (train.augment_mirror)
  // gets all eight flips.
  auto [q, unused] = ball_and_box(32, 32, 32, 4);
  auto options = zscore(32);
  options.probabilities = true;
  options.threshold = 0.5;
  infer::Segmenter plain(model, one_shot(), options);
  at::Tensor mean = at::zeros({2, 32, 32, 32});
  for (int mask = 0; mask < 8; ++mask) {
    std::vector<int64_t> dims;
    for (int a = 0; a < 3; ++a)
      if (mask & (1 << a)) dims.push_back(a);
    io::Image flipped = q;
    flipped.voxels = dims.empty() ? q.voxels : q.voxels.flip(dims).contiguous();
    at::Tensor p = plain.segment(flipped).probabilities->voxels;
    std::vector<int64_t> back;
    for (auto d : dims) back.push_back(d + 1);
    mean += back.empty() ? p : p.flip(back);
  }
  mean /= 8;
  options.mirror_tta = true;
  // Without mirroring in its training, a model refuses --tta.
  EXPECT_NE(error_of([&] { infer::Segmenter(model, one_shot(), options); }).find("not trained with mirror augmentation"),
            std::string::npos);
  model::IrisModel mirrored = model::load_model(model);
  mirrored.mirror_axes = "xyz";
  const std::string mirrored_path = temp_path("segmenter_mirrored.iris");
  model::save_model(mirrored, mirrored_path);
  infer::Segmenter tta(mirrored_path, one_shot(), options);
  const at::Tensor got = tta.segment(q).probabilities->voxels;
  EXPECT_LT((got - mean).abs().max().item<float>(), 1e-5);
  // The untrained model is not mirror-symmetric: TTA changes something.
  EXPECT_GT((got - plain.segment(q).probabilities->voxels).abs().max().item<float>(), 1e-4);
}

// Only the axes the model learnt: mirror-invariant along x alone, --tta is
// the mean of the query and its x-flip (the last tensor axis).
TEST_F(SegmenterTest, MirroringFlipsOnlyTheAxesTheModelLearnt) {
  auto [q, unused] = ball_and_box(32, 32, 32, 5);
  auto options = zscore(32);
  options.probabilities = true;
  infer::Segmenter plain(model, one_shot(), options);
  io::Image flipped = q;
  flipped.voxels = q.voxels.flip({2}).contiguous();
  const at::Tensor mean =
      (plain.segment(q).probabilities->voxels + plain.segment(flipped).probabilities->voxels.flip({3})) / 2;
  model::IrisModel x_only = model::load_model(model);
  x_only.mirror_axes = "x";
  const std::string path = temp_path("segmenter_mirrored_x.iris");
  model::save_model(x_only, path);
  options.mirror_tta = true;
  const at::Tensor got = infer::Segmenter(path, one_shot(), options).segment(q).probabilities->voxels;
  EXPECT_LT((got - mean).abs().max().item<float>(), 1e-5);
}

// In-context tuning optimises the loss the model file records (the author's
// adaptive Tversky here), soft Dice where it records none, and --tune-loss
// overrides it: same weights and examples, so the first step's loss tells.
TEST_F(SegmenterTest, TuningOptimisesTheLossTheModelWasTrainedWith) {
  model::IrisModel tversky = model::load_model(model);
  ASSERT_FALSE(tversky.loss.has_value());
  tversky.loss = model::LossWeights{model::RegionLoss::adaptive_tversky, 1.0, 1.0};
  const std::string tversky_path = temp_path("segmenter_tversky.iris");
  model::save_model(tversky, tversky_path);
  infer::TaskSpec spec = one_shot();
  spec.strategy = "tuning";
  spec.tuning.steps = 1;
  spec.tuning.learning_rate = 0.01;
  auto first_loss = [&](const std::string& path, const infer::TaskSpec& t, std::string* which) {
    const Json report = infer::Segmenter(path, t, zscore(32)).report();
    *which = report.at("tuning_loss").get<std::string>();
    return report.at("tuning_losses").at(0).get<double>();
  };
  std::string plain_loss, model_loss, forced_loss;
  const double plain = first_loss(model, spec, &plain_loss);
  const double recorded = first_loss(tversky_path, spec, &model_loss);
  spec.tune_loss = model::RegionLoss::soft_dice;
  const double forced = first_loss(tversky_path, spec, &forced_loss);
  EXPECT_EQ(plain_loss, "soft_dice + BCE, 1:1 (default: the model file records none)");
  EXPECT_EQ(model_loss, "adaptive_tversky + BCE, 1:1 (the model file)");
  EXPECT_EQ(forced_loss, "soft_dice + BCE, 1:1 (tune_loss)");
  EXPECT_GT(std::abs(recorded - plain), 1e-4) << "the model's adaptive Tversky loss was not the one tuned";
  EXPECT_EQ(forced, plain);
  infer::TaskSpec one = one_shot();
  one.tune_loss = model::RegionLoss::adaptive_tversky;
  EXPECT_NE(error_of([&] { infer::Segmenter(model, one, zscore(32)); }).find("tune_loss: only with strategy tuning"),
            std::string::npos);
}

TEST_F(SegmenterTest, Bf16AutocastIsNearFloat32AndRunsInBf16) {
  auto [q, unused] = ball_and_box(32, 40, 36, 6);
  auto options = zscore(32);
  options.probabilities = true;
  infer::Segmenter full(model, one_shot(), options);
  options.bf16 = true;
  infer::Segmenter half(model, one_shot(), options);
  const infer::Segmentation a = full.segment(q), b = half.segment(q);
  ASSERT_EQ(b.probabilities->voxels.scalar_type(), at::kFloat);
  const double diff = (a.probabilities->voxels - b.probabilities->voxels).abs().max().item<double>();
  EXPECT_GT(diff, 0.0) << "bf16 changed nothing: autocast was not on";
  EXPECT_LT(diff, 0.1);
  // The untrained model sits near 0.5 in many voxels: labels must agree
  // where float32 is decisive (its best class clearly above or below 0.5).
  const at::Tensor best = std::get<0>(a.probabilities->voxels.max(0));
  const at::Tensor decisive = best.gt(0.6) | best.lt(0.4);
  ASSERT_GT(decisive.sum().item<long>(), 1000);
  const double agree = a.labels.voxels.eq(b.labels.voxels).masked_select(decisive).to(at::kDouble).mean().item<double>();
  EXPECT_GT(agree, 0.99);
}

TEST_F(SegmenterTest, ReaderAndWriterErrorsReachTheCaller) {
  infer::Segmenter segmenter(model, one_shot(), zscore());
  auto [q, unused] = ball_and_box(30, 40, 36, 5);
  const std::string good = temp_path("seg_good.nii.gz");
  io::write_image(q, good);
  const std::string first_out = temp_path("seg_first_out.nii.gz");
  fs::remove(first_out);
  std::vector<infer::QueryJob> jobs{{good, first_out, "", ""},
                                    {temp_path("missing.nii.gz"), temp_path("seg_missing_out.nii.gz"), "", ""}};
  // The second input is missing: listed as failed, the first is written.
  segmenter.segment_files(jobs);
  ASSERT_EQ(segmenter.failed().size(), 1u);
  EXPECT_NE(segmenter.failed()[0].error.find("missing.nii.gz"), std::string::npos) << segmenter.failed()[0].error;
  EXPECT_EQ(segmenter.failed()[0].input, temp_path("missing.nii.gz"));
  EXPECT_TRUE(fs::exists(first_out));
  EXPECT_FALSE(fs::exists(temp_path("seg_missing_out.nii.gz")));
  EXPECT_EQ(segmenter.report()["failed"].size(), 1u);
  // One query alone: its error is the caller's.
  std::string e = error_of([&] { segmenter.segment_files({jobs[1]}); });
  EXPECT_NE(e.find("missing.nii.gz"), std::string::npos) << e;
  // An output under a regular file cannot be created (even as root).
  const std::string blocker = temp_path("seg_blocker");
  std::ofstream(blocker) << "a file, not a folder";
  jobs = {{good, blocker + "/out.nii.gz", "", ""}};
  e = error_of([&] { segmenter.segment_files(jobs); });
  EXPECT_NE(e.find(blocker), std::string::npos) << e;
}

TEST_F(SegmenterTest, PlansAndTaskSourcesAreCheckedBeforeAnyWork) {
  const fs::path in = temp_path("seg_plan_in");
  fs::create_directories(in / "sub");
  auto [q, unused] = ball_and_box(20, 20, 20, 6);
  io::write_image(q, (in / "a.nii.gz").string());
  io::write_image(q, (in / "a.nii").string());  // the same case name
  EXPECT_NE(error_of([&] { infer::plan_queries(in.string(), temp_path("")); }).find("case name 'a'"), std::string::npos);
  fs::remove(in / "a.nii");
  infer::PlanOptions plan;
  fs::remove_all(temp_path("a_file.nii.gz"));
  std::ofstream(temp_path("a_file.nii.gz")) << "a file, not a folder";
  plan.probabilities = temp_path("a_file.nii.gz");
  EXPECT_EQ(error_of([&] { infer::plan_queries(in.string(), temp_path(""), plan); }).rfind("probabilities: ", 0), 0u);
  // A missing output folder is made (SLURM array jobs); a file in its place is refused.
  fs::remove_all(temp_path("not_there"));
  EXPECT_EQ(infer::plan_queries(in.string(), temp_path("not_there") + "/deeper").size(), 1u);
  EXPECT_TRUE(fs::is_directory(temp_path("not_there") + "/deeper"));
  EXPECT_EQ(error_of([&] { infer::plan_queries(in.string(), temp_path("a_file.nii.gz")); }).rfind("output: ", 0), 0u);
  plan = {};
  plan.dicom_seg = "seg.dcm";
  EXPECT_EQ(error_of([&] { infer::plan_queries((in / "a.nii.gz").string(), "x.nii.gz", plan); }).rfind("dicom_seg: ", 0),
            0u);

  infer::TaskSpec two_sources = one_shot();
  two_sources.task_file = temp_path("some.task");
  EXPECT_NE(error_of([&] { infer::Segmenter(model, two_sources, zscore()); }).find("exactly one task source"),
            std::string::npos);
  infer::TaskSpec bank;
  bank.classes = {"liver"};
  bank.references = {reference};
  bank.reference_masks = {mask};
  EXPECT_NE(error_of([&] { infer::Segmenter(model, bank, zscore()); }).find("classes only"), std::string::npos);
  auto bad = zscore();
  bad.preprocess = "mr-bogus";
  EXPECT_EQ(error_of([&] { infer::Segmenter(model, one_shot(), bad); }).rfind("preprocess: ", 0), 0u);
  bad = zscore(40);  // not a multiple of 16
  EXPECT_EQ(error_of([&] { infer::Segmenter(model, one_shot(), bad); }).rfind("window: ", 0), 0u);
}

TEST_F(SegmenterTest, PartsSplitTheCasesAndFinishedCasesAreSkippedOrRefused) {
  const fs::path in = temp_path("seg_parts_in"), out = temp_path("seg_parts_out");
  fs::create_directories(in);
  fs::create_directories(out);
  auto [q, unused] = ball_and_box(8, 8, 8, 7);
  std::vector<std::string> names;
  for (int i = 0; i < 20; ++i) {
    names.push_back("case" + std::to_string(i));
    io::write_image(q, (in / (names.back() + ".nii.gz")).string());
  }
  // Three parts: every case in exactly one, each part non-empty.
  std::vector<int> seen(20, 0);
  for (long part = 0; part < 3; ++part) {
    infer::PlanOptions plan;
    plan.num_parts = 3;
    plan.part_id = part;
    const auto jobs = infer::plan_queries(in.string(), out.string(), plan);
    EXPECT_GT(jobs.size(), 0u) << "part " << part;
    for (const auto& j : jobs) ++seen[std::stoi(fs::path(j.input).filename().string().substr(4))];
    // A case keeps its part when others are added: the part is a function of the name.
    std::vector<std::string> more{"aa_new_case"};  // first in the list: every index moves
    more.insert(more.end(), names.begin(), names.end());
    std::vector<std::string> before, after;
    for (size_t i : infer::shard(names, 3, part)) before.push_back(names[i]);
    for (size_t i : infer::shard(more, 3, part))
      if (more[i] != "aa_new_case") after.push_back(more[i]);
    EXPECT_EQ(before, after) << "part " << part;
  }
  for (int i = 0; i < 20; ++i) EXPECT_EQ(seen[i], 1) << "case" << i;
  infer::PlanOptions bad;
  bad.num_parts = 3;
  bad.part_id = 3;
  EXPECT_EQ(error_of([&] { infer::plan_queries(in.string(), out.string(), bad); }).rfind("part_id: ", 0), 0u);

  // One finished case: refused by default, skipped with skip_finished,
  // planned again with overwrite.
  io::write_image(q, (out / "case3.nii.gz").string());
  EXPECT_NE(error_of([&] { infer::plan_queries(in.string(), out.string()); }).find("skip_finished skips"), std::string::npos);
  infer::PlanOptions resume;
  resume.skip_finished = true;
  std::vector<infer::SkippedQuery> skipped;
  EXPECT_EQ(infer::plan_queries(in.string(), out.string(), resume, &skipped).size(), 19u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0].input, "case3");
  EXPECT_EQ(skipped[0].reason, "finished: its outputs exist");
  infer::PlanOptions again;
  again.overwrite = true;
  EXPECT_EQ(infer::plan_queries(in.string(), out.string(), again).size(), 20u);
}

TEST_F(SegmenterTest, StatisticsAgreeWithLoopsOverTheLabelMap) {
  auto [q, unused] = ball_and_box(20, 24, 22, 8);
  q.geometry.spacing = {0.8, 1.2, 2.0};
  q.geometry.origin = {10, -20, 30};
  q.geometry.direction = {0, 1, 0, -1, 0, 0, 0, 0, 1};  // x and y swapped, one flipped
  io::Image labels;
  labels.geometry = q.geometry;
  labels.voxels = torch::zeros({20, 24, 22}, torch::kByte);
  // Class 1: two separate boxes; class 2: one voxel; class 3: absent.
  labels.voxels.index_put_({torch::indexing::Slice(2, 5), torch::indexing::Slice(3, 7), torch::indexing::Slice(1, 4)}, 1);
  labels.voxels.index_put_({torch::indexing::Slice(10, 12), torch::indexing::Slice(15, 17), torch::indexing::Slice(15, 20)}, 1);
  labels.voxels[7][8][9] = 2;
  const auto stats = infer::class_statistics(q, labels, {1, 2, 3}, {"boxes", "dot"});
  ASSERT_EQ(stats.size(), 3u);

  // By hand: every voxel of class 1, its value and its world position.
  auto acc = labels.voxels.accessor<uint8_t, 3>();
  auto img = q.voxels.accessor<float, 3>();
  std::vector<double> values;
  double sx = 0, sy = 0, sz = 0;
  long minx = 1 << 30, maxx = -1;
  for (long z = 0; z < 20; ++z)
    for (long y = 0; y < 24; ++y)
      for (long x = 0; x < 22; ++x)
        if (acc[z][y][x] == 1) {
          values.push_back(img[z][y][x]);
          // world = origin + D * (spacing * index); D columns are the axes.
          sx += 10 + 0 * 0.8 * x + 1 * 1.2 * y + 0 * 2.0 * z;
          sy += -20 + -1 * 0.8 * x + 0 * 1.2 * y + 0 * 2.0 * z;
          sz += 30 + 2.0 * z;
          minx = std::min(minx, x);
          maxx = std::max(maxx, x);
        }
  const double n = static_cast<double>(values.size());
  double mean = 0;
  for (double v : values) mean += v / n;
  double var = 0;
  for (double v : values) var += (v - mean) * (v - mean) / n;
  std::sort(values.begin(), values.end());
  auto pct = [&](double p) {  // numpy's linear rule, written out
    const double pos = p * (n - 1);
    const size_t lo = static_cast<size_t>(pos);
    const double hi = values[std::min(lo + 1, values.size() - 1)];
    return values[lo] + (pos - lo) * (hi - values[lo]);
  };
  const auto& s = stats[0];
  EXPECT_EQ(s.name, "boxes");
  EXPECT_EQ(s.voxels, 3 * 4 * 3 + 2 * 2 * 5);
  EXPECT_NEAR(s.volume_mm3, s.voxels * 0.8 * 1.2 * 2.0, 1e-9);
  EXPECT_NEAR(s.mean, mean, 1e-6);
  EXPECT_NEAR(s.std, std::sqrt(var), 1e-6);
  EXPECT_NEAR(s.median, pct(0.5), 1e-6);
  EXPECT_NEAR(s.p5, pct(0.05), 1e-6);
  EXPECT_NEAR(s.p95, pct(0.95), 1e-6);
  EXPECT_NEAR(s.centroid_mm[0], sx / n, 1e-9);
  EXPECT_NEAR(s.centroid_mm[1], sy / n, 1e-9);
  EXPECT_NEAR(s.centroid_mm[2], sz / n, 1e-9);
  EXPECT_EQ(s.bbox_min[0], minx);
  EXPECT_EQ(s.bbox_max[0], maxx);
  EXPECT_EQ(s.bbox_min[2], 2);
  EXPECT_EQ(s.bbox_max[2], 11);
  EXPECT_EQ(s.components, 2);
  EXPECT_EQ(stats[1].voxels, 1);
  EXPECT_EQ(stats[1].components, 1);
  EXPECT_NEAR(stats[1].median, img[7][8][9], 1e-6);
  EXPECT_EQ(stats[2].voxels, 0);
  EXPECT_TRUE(std::isnan(stats[2].mean));
  EXPECT_EQ(stats[2].bbox_min[0], -1);
  // The CSV has a header and one row per class; empty values for NaN.
  const std::string csv = infer::statistics_csv({{"q", stats}});
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  EXPECT_NE(csv.find("q,3,,0,0,,,,,"), std::string::npos) << csv;
}

TEST(SeriesFilter, ParsesItsKeysAndNamesTheFlagOnMistakes) {
  const auto f = infer::SeriesFilter::parse("modality=ct, description=ax|axial,min-slices=20", "--series-filter");
  EXPECT_EQ(f.modality, "CT");
  EXPECT_EQ(f.description, "ax|axial");
  EXPECT_EQ(f.min_slices, 20);
  EXPECT_EQ(infer::SeriesFilter::parse("min-slices=1", "--series-filter").min_slices, 3);  // never below a volume
  for (const char* bad : {"modality", "colour=red", "description=(", "min-slices=x"})
    EXPECT_EQ(error_of([&] { infer::SeriesFilter::parse(bad, "--series-filter"); }).rfind("--series-filter: ", 0), 0u)
        << bad;
}

TEST_F(SegmenterTest, AnEnsembleOfModelsAveragesTheirProbabilities) {
  const std::string second = save_tiny_model(temp_path("segmenter_tiny_seed8.iris"), 8);
  const std::string copy = temp_path("segmenter_tiny_copy.iris");
  fs::copy_file(model, copy, fs::copy_options::overwrite_existing);
  auto options = zscore();
  options.probabilities = true;
  auto [q, unused] = ball_and_box(30, 44, 40, 9);
  const at::Tensor p1 = infer::Segmenter(model, one_shot(), options).segment(q).probabilities->voxels;
  const at::Tensor p2 = infer::Segmenter(second, one_shot(), options).segment(q).probabilities->voxels;
  ASSERT_GT((p1 - p2).abs().max().item<float>(), 1e-3) << "the two models must differ";
  // Two copies of one model: exactly that model.
  EXPECT_TRUE(torch::equal(infer::Segmenter({model, copy}, one_shot(), options).segment(q).probabilities->voxels, p1));
  // Two models, equal and 3:1 weights: the means computed here.
  infer::Segmenter pair({model, second}, one_shot(), options);
  EXPECT_TRUE(torch::allclose(pair.segment(q).probabilities->voxels, (p1 + p2) / 2, 1e-6, 1e-6));
  infer::Segmenter weighted({model, second}, one_shot(), options, {3, 1});
  EXPECT_TRUE(torch::allclose(weighted.segment(q).probabilities->voxels, (3 * p1 + p2) / 4, 1e-6, 1e-6));
  EXPECT_EQ(weighted.report()["models"].size(), 2u);

  infer::TaskSpec stored = one_shot();
  stored.references.clear();
  stored.reference_masks.clear();
  stored.task_file = temp_path("x.task");
  EXPECT_EQ(error_of([&] { infer::Segmenter({model, second}, stored, options); }).rfind("task_file: ", 0), 0u);
  EXPECT_EQ(error_of([&] { infer::Segmenter({model, second}, one_shot(), options, {1}); }),
            "model_weights: give one weight per model (2 models, 1 weights)");
  model::IrisModel other = model::load_model(second);
  other.preprocess = "spacing: [2, 2, 2]\n";
  const std::string resampling = temp_path("segmenter_other_pre.iris");
  model::save_model(other, resampling);
  auto from_model = options;
  from_model.preprocess = "model";
  EXPECT_NE(error_of([&] { infer::Segmenter({model, resampling}, one_shot(), from_model); }).find("other preprocessing"),
            std::string::npos);
}
