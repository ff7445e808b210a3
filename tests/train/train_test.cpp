// Training engine: optimiser maths, schedules, dataset layouts, episode
// sampling, exact resume, and two Gloo ranks against one process.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>

#include <ATen/core/grad_mode.h>
#include <tuple>

#include <torch/torch.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/common/json.h"
#include "iris/common/tensor_file.h"
#include "iris/data/dataset.h"
#include "iris/data/episodes.h"
#include "iris/io/image_io.h"
#include "iris/io/preprocess.h"
#include "iris/model/model_file.h"
#include "iris/train/batch_probe.h"
#include "iris/train/communicator.h"
#include "iris/model/losses.h"
#include "iris/train/optimizer.h"
#include "iris/train/schedule.h"
#include "iris/train/tensorboard.h"
#include "iris/train/trainer.h"
#include "support/test_support.h"

extern char** environ;
using namespace iris;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) { return iris::testing::temp_folder("train_" + name); }

// Two synthetic "subjects": a bright ellipsoid (class 1) with a darker core
// (class 2) at different places, so episodes have a real task to learn.
std::vector<data::LoadedDataset> synthetic_datasets() {
  data::LoadedDataset d;
  d.name = "synthetic";
  for (int s = 0; s < 3; ++s) {
    const long n = 40;
    auto r = torch::arange(n, torch::kFloat);
    auto z = r.view({n, 1, 1}), y = r.view({1, n, 1}), x = r.view({1, 1, n});
    const double cz = 18 + 2 * s, cy = 20 - s, cx = 19 + s;
    auto d2 = ((x - cx) / 10).pow(2) + ((y - cy) / 8).pow(2) + ((z - cz) / 9).pow(2);
    auto labels = (d2 <= 1).to(torch::kLong) + (d2 <= 0.3).to(torch::kLong);
    torch::manual_seed(s);
    data::CaseVolume v;
    v.name = "case" + std::to_string(s);
    v.image = labels.to(torch::kFloat) * 0.8 + 0.2 * torch::randn({n, n, n});
    v.labels = labels;
    v.classes = {1, 2};
    d.cases.push_back(v);
  }
  d.class_ids = {{1, 0}, {2, 1}};
  return {d};
}

train::TrainConfig tiny_train_config(const fs::path& out) {
  train::TrainConfig c;
  c.iterations = 4;
  c.batch = 2;
  c.episodes.patch = 32;
  c.episodes.max_classes = 2;
  c.lr = 1e-3;
  c.warmup = 1;
  c.checkpoint_every = 0;
  c.validate_every = 0;
  c.log_every = 1;
  c.output_dir = out.string();
  c.seed = 5;
  return c;
}

model::ModelConfig tiny_model() {
  auto m = model::preset("tiny");
  m.memory_bank_size = 4;
  return m;
}

}  // namespace

TEST(Lamb, FollowsThePublishedUpdateRule) {
  // One parameter, two steps, compared with the rule written out by hand:
  // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; u = m/(sqrt(v)+eps) + wd w;
  // w -= lr * min(|w|, 10)/|u| * u   (the author's variant: no bias correction).
  at::Tensor w = torch::tensor({0.5, -1.0, 2.0}).set_requires_grad(true);
  train::ParamGroup g;
  g.params = {w};
  g.param_names = {"w"};
  g.weight_decay = 0.01;
  train::Optimizer opt({g}, {});
  at::Tensor ref = w.detach().clone().to(torch::kDouble), m = torch::zeros(3, torch::kDouble), v = torch::zeros(3, torch::kDouble);
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-6;
  for (int step = 0; step < 2; ++step) {
    at::Tensor loss = (w * w * torch::tensor({1.0, 2.0, 3.0})).sum();
    opt.zero_grad();
    loss.backward();
    at::Tensor grad = w.grad().to(torch::kDouble);
    m = b1 * m + (1 - b1) * grad;
    v = b2 * v + (1 - b2) * grad * grad;
    at::Tensor u = m / (v.sqrt() + eps) + 0.01 * ref;
    const double trust = std::min(ref.norm().item<double>(), 10.0) / u.norm().item<double>();
    ref = ref - lr * trust * u;
    opt.step(lr);
    EXPECT_LT((w.detach().to(torch::kDouble) - ref).abs().max().item<double>(), 1e-6) << "step " << step;
  }
}

TEST(Lamb, MinimisesAToyProblem) {
  torch::manual_seed(0);
  at::Tensor target = torch::randn({16});
  at::Tensor w = torch::randn({16}).set_requires_grad(true);
  train::ParamGroup g;
  g.params = {w};
  g.param_names = {"w"};
  train::Optimizer opt({g}, {});
  const double before = (w - target).pow(2).sum().item<double>();
  for (int i = 0; i < 300; ++i) {
    opt.zero_grad();
    (w - target).pow(2).sum().backward();
    opt.step(0.02);
  }
  EXPECT_LT((w - target).pow(2).sum().item<double>(), before * 0.01);
}

TEST(AdamW, MatchesLibTorchAdamW) {
  at::Tensor a = torch::tensor({1.0f, -2.0f, 3.0f}).set_requires_grad(true);
  at::Tensor b = a.detach().clone().set_requires_grad(true);
  train::ParamGroup g;
  g.params = {a};
  g.param_names = {"a"};
  g.weight_decay = 0.1;
  train::OptimizerOptions o;
  o.kind = "adamw";
  o.eps = 1e-8;
  train::Optimizer ours({g}, o);
  torch::optim::AdamW theirs({b}, torch::optim::AdamWOptions(0.01).weight_decay(0.1).eps(1e-8));
  for (int i = 0; i < 5; ++i) {
    ours.zero_grad();
    theirs.zero_grad();
    (a * a * a).sum().backward();
    (b * b * b).sum().backward();
    ours.step(0.01);
    theirs.step();
  }
  EXPECT_LT((a - b).abs().max().item<float>(), 1e-5);
}

TEST(Schedule, WarmupThenExponentialAndCosine) {
  train::ScheduleOptions s;
  s.base_lr = 2e-3;
  s.warmup = 10;
  s.total = 110;
  s.final_ratio = 0.01;
  EXPECT_NEAR(train::learning_rate(s, 0), 2e-4, 1e-12);
  EXPECT_NEAR(train::learning_rate(s, 9), 2e-3, 1e-12);
  EXPECT_NEAR(train::learning_rate(s, 60), 2e-3 * std::pow(0.01, 0.5), 1e-12);
  EXPECT_NEAR(train::learning_rate(s, 110), 2e-5, 1e-12);
  s.kind = "cosine";
  EXPECT_NEAR(train::learning_rate(s, 60), 2e-3 * (0.01 + 0.99 * 0.5), 1e-12);
  s.kind = "sawtooth";
  EXPECT_THROW(train::learning_rate(s, 20), Error);
}

TEST(Loss, DiceAndBceOfKnownValues) {
  // Perfect confident prediction: Dice loss ~0, BCE ~0; padding slot ignored.
  at::Tensor t = torch::zeros({1, 2, 4, 4, 4});
  t[0][0].narrow(0, 0, 2).fill_(1);
  at::Tensor logits = (t * 2 - 1) * 50;
  at::Tensor valid = torch::tensor({{1.0f, 0.0f}});
  auto terms = model::dice_bce_loss(logits, t, valid);
  EXPECT_LT(terms.dice.item<float>(), 1e-4);
  EXPECT_LT(terms.bce.item<float>(), 1e-4);
  // All-zero logits: p = 0.5 everywhere; Dice = 2*0.5*32 / (32 + 32) = 0.5, BCE = ln 2.
  auto half = model::dice_bce_loss(torch::zeros_like(t), t, valid);
  EXPECT_NEAR(half.dice.item<float>(), 0.5, 1e-4);
  EXPECT_NEAR(half.bce.item<float>(), std::log(2.0), 1e-4);
}

TEST(Loss, AdaptiveTverskyOfKnownValues) {
  // All-zero logits: p = 0.5. A mask of 8 of 64 voxels: TP = 4, FP = 28, FN = 4;
  // alpha = 28 / 32 = 0.875 is clamped to 0.8 (beta 0.2):
  // 1 - 4 / (4 + 0.8 * 28 + 0.2 * 4) = 1 - 4 / 27.2. Unclamped it would be 1 - 4 / 29.
  at::Tensor t = torch::zeros({1, 2, 4, 4, 4});
  t[0][0][0].narrow(0, 0, 2).fill_(1);
  t[0][1].narrow(0, 0, 2).fill_(1);  // 32 of 64: alpha = 0.5, 1 - 16 / (16 + 8 + 8) = 0.5
  model::LossWeights w;
  w.region = model::RegionLoss::adaptive_tversky;
  auto terms = model::dice_bce_loss(torch::zeros_like(t), t, {}, w);
  EXPECT_NEAR(terms.dice_per_class[0][0].item<double>(), 1 - 4 / 27.2, 1e-6);
  EXPECT_NEAR(terms.dice_per_class[0][1].item<double>(), 0.5, 1e-6);
  // A padding slot weighs 0.
  auto padded = model::dice_bce_loss(torch::zeros_like(t), t, torch::tensor({{0.0f, 1.0f}}), w);
  EXPECT_NEAR(padded.dice.item<double>(), 0.5, 1e-6);
  EXPECT_EQ(model::parse_region_loss("adaptive_tversky", "train.loss"), model::RegionLoss::adaptive_tversky);
  EXPECT_THROW(model::parse_region_loss("dice", "train.loss"), Error);
}

TEST(Datasets, TheSplitHonoursZeroAndSmallTrainFractions) {
  // A validation-only dataset (split [0, 1, 0]) once trained on both of its
  // cases: the tiny-dataset rule (everything trains) overrode the user's 0.
  data::DatasetSpec d;
  d.name = "held_out";
  d.cases = {{"kmeans", "k.nii.gz", "kb.nii.gz"}, {"colin", "c.nii.gz", "cb.nii.gz"}};
  d.split = {0, 1, 0};
  data::make_split(d);
  EXPECT_TRUE(d.train.empty());
  EXPECT_EQ(d.val.size(), 2u);
  d.split = {0, 0.5, 0.5};
  data::make_split(d);
  EXPECT_TRUE(d.train.empty());
  EXPECT_EQ(d.val.size() + d.test.size(), 2u);
  // A training fraction too small for two cases: one trains, one validates
  // (it used to be both training, the validation case included).
  d.split = {0.1, 0.9, 0};
  data::make_split(d);
  EXPECT_EQ(d.train.size(), 1u);
  EXPECT_EQ(d.val.size(), 1u);
  // One case and a validation fraction: it trains.
  d.cases.resize(1);
  d.split = {0.5, 0.5, 0};
  data::make_split(d);
  EXPECT_EQ(d.train.size(), 1u);
}

TEST(Datasets, ReadsAnNnUNetRawFolderAndSplitsReproducibly) {
  fs::path root = temp_dir("nnunet") / "Dataset001_Brain";
  fs::create_directories(root / "imagesTr");
  fs::create_directories(root / "labelsTr");
  std::ofstream(root / "dataset.json") << R"({"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1, "ventricles": 2}, "numTraining": 20, "file_ending": ".nii.gz"})";
  for (int i = 0; i < 20; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "brain_%03d", i);
    std::ofstream(root / "imagesTr" / (std::string(name) + "_0000.nii.gz")) << "x";
    std::ofstream(root / "labelsTr" / (std::string(name) + ".nii.gz")) << "x";
  }
  ConfigMap c;
  c.set("datasets.brains.layout", "nnunet");
  c.set("datasets.brains.root", root.string());
  c.set("datasets.brains.modality", "MR");
  auto specs = data::datasets_from_config(c);
  ASSERT_EQ(specs.size(), 1u);
  EXPECT_EQ(specs[0].cases.size(), 20u);
  EXPECT_EQ(specs[0].class_names.at(1), "brain");
  EXPECT_EQ(specs[0].class_names.at(2), "ventricles");
  EXPECT_EQ(specs[0].train.size(), 15u);
  EXPECT_EQ(specs[0].val.size(), 1u);
  EXPECT_EQ(specs[0].test.size(), 4u);
  auto again = data::datasets_from_config(c);
  for (size_t i = 0; i < again[0].train.size(); ++i) EXPECT_EQ(again[0].train[i].name, specs[0].train[i].name);
  // A label map missing for an image is named.
  fs::remove(root / "labelsTr" / "brain_007.nii.gz");
  try {
    data::datasets_from_config(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("brain_007"), std::string::npos) << e.what();
  }
  c.set("datasets.brains.wieght", "2");
  EXPECT_THROW(data::datasets_from_config(c), Error);
  fs::remove_all(root.parent_path());
}

TEST(Episodes, AreReproducibleAndKeepTheReferenceMask) {
  data::EpisodeOptions o;
  o.patch = 32;
  o.max_classes = 2;
  data::EpisodeSampler s(synthetic_datasets(), o, 42);
  auto a = s.sample(7, 2), b = s.sample(7, 2), c = s.sample(8, 2);
  EXPECT_TRUE(at::equal(a.query, b.query));
  EXPECT_TRUE(at::equal(a.reference_masks, b.reference_masks));
  EXPECT_FALSE(at::equal(a.query, c.query));
  EXPECT_EQ(a.query.sizes(), (at::IntArrayRef{2, 1, 32, 32, 32}));
  for (long i = 0; i < 2; ++i)
    for (long k = 0; k < 2; ++k)
      if (a.valid[i][k].item<float>() > 0) {
        EXPECT_GT(a.reference_masks[i][k].sum().item<float>(), 0);
        EXPECT_GE(a.class_ids[i][k].item<long>(), 0);
      } else {
        EXPECT_EQ(a.class_ids[i][k].item<long>(), -1);
      }
}

// train.augment_mirror: query patches are mirrored along the named axes (each
// at 50 %), references never; without it no random number is drawn for it, so
// every other episode is as before. The exported model records the axes.
TEST(Episodes, MirrorAugmentationFlipsQueriesAlongItsAxesOnly) {
  // One case whose intensity rises along x (by 1), y (by 100) and z (by
  // 10000): the median step along an axis says whether a patch was mirrored.
  data::LoadedDataset d;
  d.name = "ramp";
  const long n = 64;
  auto r = torch::arange(n, torch::kFloat);
  data::CaseVolume v;
  v.name = "ramp";
  v.image = r.view({1, 1, n}) + 100 * r.view({1, n, 1}) + 10000 * r.view({n, 1, 1});
  v.labels = torch::zeros({n, n, n}, torch::kLong);
  v.labels.slice(0, 24, 40).slice(1, 24, 40).slice(2, 24, 40).fill_(1);
  v.classes = {1};
  d.cases = {v, v};
  d.class_ids = {{1, 0}};
  data::EpisodeOptions o;
  o.patch = 16;
  o.max_classes = 1;
  o.foreground_spread = 0;
  o.augment.rotation_degrees = 0;
  o.augment.scale_min = o.augment.scale_max = 1;
  o.augment.intensity_probability = 0;
  o.augment.blur_probability = 0;
  o.augment.noise_std_max = 0;
  o.augment.mirror_axes = "x";
  const data::EpisodeSampler sampler({d}, o, 42);
  auto step = [](const at::Tensor& q, long dim) { return (q.narrow(dim, 1, q.size(dim) - 1) - q.narrow(dim, 0, q.size(dim) - 1)).median().item<double>(); };
  long x_flipped = 0;
  for (long e = 0; e < 16; ++e) {
    const auto b = sampler.sample(e, 1);
    const at::Tensor q = b.query[0][0], ref = b.reference[0][0];
    const double sx = step(q, 2), sy = step(q, 1), sz = step(q, 0);
    EXPECT_NEAR(std::abs(sx), 1.0, 0.1) << e;
    EXPECT_NEAR(sy, 100.0, 0.1) << e << ": y is not a mirror axis";
    EXPECT_NEAR(sz, 10000.0, 5.0) << e << ": z is not a mirror axis";
    x_flipped += sx < 0;
    EXPECT_NEAR(step(ref, 2), 1.0, 0.1) << e << ": the reference is never mirrored";
  }
  EXPECT_GT(x_flipped, 2) << "no query was mirrored";
  EXPECT_LT(x_flipped, 14) << "every query was mirrored";
  // The trainer writes the axes into the model file; without the key none.
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  const fs::path dir = temp_dir("mirror_model");
  train::TrainConfig c = tiny_train_config(dir);
  c.iterations = 1;
  c.episodes.augment.mirror_axes = "x";
  c.loss = model::RegionLoss::adaptive_tversky;  // and the loss it trained with, for in-context tuning
  c.dice_weight = 0.75;
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                   std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
  t.run(false);
  const model::IrisModel written = model::load_model(t.final_model_path());
  EXPECT_EQ(written.mirror_axes, "x");
  ASSERT_TRUE(written.loss.has_value());
  EXPECT_EQ(written.loss->region, model::RegionLoss::adaptive_tversky);
  EXPECT_EQ(written.loss->dice, 0.75);
  EXPECT_EQ(written.loss->bce, 1.0);
  ConfigMap bad;
  bad.set("augment_mirror", "[x, w]");
  try {
    train::TrainConfig::from_config(bad);
    ADD_FAILURE() << "an axis w was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w' is not an axis"), std::string::npos) << e.what();
  }
  ConfigMap good;
  good.set("augment_mirror", "[z, x]");
  EXPECT_EQ(train::TrainConfig::from_config(good).episodes.augment.mirror_axes, "xz");
  fs::remove_all(dir);
}

// A small structure must not always sit at the centre of the query patch:
// then "a blob in the middle" solves every episode and the reference is never
// read (what the first demo model learnt).
TEST(Episodes, ForegroundSpreadMovesASmallStructureAroundTheQueryPatch) {
  data::LoadedDataset d;
  d.name = "dot";
  for (int s = 0; s < 2; ++s) {
    data::CaseVolume v;
    v.name = "case" + std::to_string(s);
    v.labels = torch::zeros({64, 64, 64}, torch::kLong);
    v.labels.slice(0, 30, 34).slice(1, 20, 24).slice(2, 40, 44).fill_(1);  // 4^3 voxels
    v.image = v.labels.to(torch::kFloat);
    v.classes = {1};
    d.cases.push_back(v);
  }
  d.class_ids = {{1, 0}};
  auto centroid_spread = [&](double spread) {
    data::EpisodeOptions o;
    o.patch = 32;
    o.max_classes = 1;
    o.foreground_oversample = 1.0;
    o.foreground_spread = spread;
    o.perturb_reference = 0;
    o.augment.enabled = false;
    data::EpisodeSampler sampler({d}, o, 3);
    std::vector<at::Tensor> centroids;
    for (long i = 0; i < 40; ++i) {
      at::Tensor m = sampler.sample(i, 1).query_masks[0][0];
      // Off-grid sampling thresholds a 4-voxel edge to 3 or 4: whole means >= 27.
      EXPECT_GE(m.sum().item<float>(), 27) << "episode " << i << ": the structure must stay whole in the patch";
      centroids.push_back(at::nonzero(m).to(at::kFloat).mean(0));
    }
    at::Tensor c = at::stack(centroids);  // [40, 3]
    // The voxel drawn is within 1.5 of the centroid, and the nearest-voxel
    // sampling of the label map moves the mask by up to half a voxel more.
    EXPECT_LT((c - 15.5).abs().max().item<float>(), 15.5 * spread + 2.5);
    return c.std(0).min().item<float>();
  };
  ConfigMap config;
  config.set("foreground_spread", "0.25");
  EXPECT_EQ(train::TrainConfig::from_config(config).episodes.foreground_spread, 0.25);
  config.set("foreground_spread", "1.5");
  EXPECT_THROW(train::TrainConfig::from_config(config), Error);
  EXPECT_LT(centroid_spread(0.0), 1.5);  // centred on one of its voxels
  EXPECT_GT(centroid_spread(0.7), 4.0);  // uniform over +-10.85 voxels: std ~6.3
}

TEST(Trainer, ResumedRunGivesTheSameLossesAsAnUninterruptedOne) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  data::EpisodeOptions o;
  fs::path full_dir = temp_dir("full"), cut_dir = temp_dir("cut");
  auto cfg_full = tiny_train_config(full_dir);
  auto cfg_cut = tiny_train_config(cut_dir);
  // A log line (at steps 3 and 4) spans the interruption after step 2.
  cfg_full.log_every = cfg_cut.log_every = 3;
  auto make = [&](const train::TrainConfig& c) {
    return std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                                            std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
  };
  auto full = make(cfg_full);
  ASSERT_EQ(full->run(false), train::TrainOutcome::kFinished);
  auto first = make(cfg_cut);
  first->stop_after(2);
  ASSERT_EQ(first->run(false), train::TrainOutcome::kPreempted);
  ASSERT_TRUE(fs::exists(first->last_checkpoint()));
  auto second = make(cfg_cut);
  ASSERT_EQ(second->run(true), train::TrainOutcome::kFinished);
  ASSERT_EQ(full->history().size(), 4u);
  ASSERT_EQ(first->history().size(), 2u);
  ASSERT_EQ(second->history().size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(first->history()[i].loss, full->history()[i].loss) << i;
    EXPECT_EQ(second->history()[i].loss, full->history()[i + 2].loss) << i + 2;
  }
  // The logged per-dataset Dice loss is the uninterrupted run's: the sums
  // since the last line travel in the checkpoint.
  auto logged = [](const fs::path& dir) {
    std::vector<double> values;
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) values.push_back(Json::parse(line)["dice_loss_by_dataset"]["synthetic"].get<double>());
    return values;
  };
  const std::vector<double> full_lines = logged(full_dir), cut_lines = logged(cut_dir);
  ASSERT_EQ(full_lines.size(), 2u);
  ASSERT_EQ(cut_lines.size(), 2u);
  for (int i = 0; i < 2; ++i) EXPECT_DOUBLE_EQ(cut_lines[i], full_lines[i]) << "line " << i;
  // The exported model carries the memory-bank names and loads back.
  auto model = model::load_model(second->final_model_path());
  EXPECT_EQ(model.class_names, (std::vector<std::string>{"outer", "core"}));
  // Training changed the memory bank entries of the classes it saw.
  model::IrisNet fresh(tiny_model());
  EXPECT_FALSE(at::equal(fresh->memory_bank[0][0], model.net->memory_bank[0][0]));
  fs::remove_all(full_dir);
  fs::remove_all(cut_dir);
}

TEST(Trainer, LossDecreasesOnALearnableTask) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  fs::path dir = temp_dir("learn");
  auto c = tiny_train_config(dir);
  c.iterations = 30;
  c.lr = 5e-3;
  c.warmup = 3;
  c.log_every = 100;
  c.episodes.augment.enabled = false;
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, 1), std::nullopt,
                   {"outer", "core"}, *comm);
  t.run(false);
  double early = 0, late = 0;
  for (int i = 0; i < 5; ++i) {
    early += t.history()[i].loss;
    late += t.history()[25 + i].loss;
  }
  EXPECT_LT(late, early * 0.9) << "early " << early / 5 << " late " << late / 5;
  fs::remove_all(dir);
}

// ---- two Gloo ranks -------------------------------------------------------
namespace {
// A communicator that counts the collectives it passes on to `inner` and
// remembers the devices of the tensors it was handed.
class Recording : public train::Communicator {
 public:
  explicit Recording(train::Communicator& inner, std::function<void(int)> on_call = {})
      : Communicator(inner.device()), inner_(inner), on_call_(std::move(on_call)) {}
  Recording(train::Communicator& inner, c10::Device claimed) : Communicator(claimed), inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return "recording"; }
  int calls = 0;
  std::set<std::string> devices;
  std::vector<int64_t> reduced;  // numel of every all-reduced tensor

 protected:
  void do_broadcast(std::vector<at::Tensor>& tensors) override {
    note(tensors);
    inner_.broadcast(tensors);
  }
  std::function<void()> do_allreduce_sum_async(at::Tensor& tensor) override {
    reduced.push_back(tensor.numel());
    note({tensor});
    return inner_.allreduce_sum_async(tensor);
  }
  void do_barrier() override {
    ++calls;
    inner_.barrier();
  }

 private:
  void note(const std::vector<at::Tensor>& tensors) {
    ++calls;
    for (const auto& t : tensors) devices.insert(t.device().str());
    if (on_call_) on_call_(calls);
  }
  train::Communicator& inner_;
  std::function<void(int)> on_call_;
};

// Adam-type updates divide by sqrt(v): for parameters with near-zero
// gradients that turns float rounding differences into O(lr) steps. A large
// epsilon makes the update proportional to the gradient, so one process and
// two ranks can be compared at float precision.
train::TrainConfig distributed_config(const fs::path& out) {
  auto c = tiny_train_config(out);
  c.iterations = 3;
  c.optimizer = "adamw";
  c.optimizer_eps = 1.0;
  c.lr = 0.05;
  return c;
}

// Two validation datasets: the synthetic subjects, and the same subjects
// mirrored along x under another name.
std::vector<data::LoadedDataset> validation_sets() {
  auto sets = synthetic_datasets();
  data::LoadedDataset mirrored = sets[0];
  mirrored.name = "mirrored";
  for (auto& v : mirrored.cases) {
    v.image = v.image.flip({2});
    v.labels = v.labels.flip({2});
  }
  sets.push_back(mirrored);
  return sets;
}

// Validation episodes as the training pipeline draws them.
data::EpisodeSampler validation_sampler(const train::TrainConfig& c) {
  data::EpisodeOptions vo = c.episodes;
  vo.augment.enabled = false;
  vo.perturb_reference = 0;
  vo.foreground_oversample = 1.0;
  return data::EpisodeSampler(validation_sets(), vo, static_cast<uint64_t>(c.seed) + 11);
}

Json validation_json(const train::ValidationResult& v) {
  Json j = {{"dice", v.dice}, {"classes", v.classes}};
  for (const auto& [name, value] : v.by_dataset) j["by_dataset"][name] = value;
  return j;
}

// Every parameter and buffer of a trained network, flattened into one tensor.
at::Tensor flat_state(train::Trainer& t) {
  std::vector<at::Tensor> state;
  for (auto& p : t.net()->parameters()) state.push_back(p.detach().reshape({-1}));
  for (auto& b : t.net()->buffers()) state.push_back(b.reshape({-1}));
  return torch::cat(state);
}
}  // namespace

// A rank of a two-process run: this binary started again (fresh processes,
// so no fork-after-threads trouble) with only the disabled worker test
// selected. IRIS_TEST_WORKER_MODE says what the worker does.
TEST(DistributedWorker, DISABLED_Run) {
  const char* out = std::getenv("IRIS_TEST_WORKER_OUT");
  const char* mode_env = std::getenv("IRIS_TEST_WORKER_MODE");
  ASSERT_TRUE(out && mode_env) << "started by the Distributed tests only";
  const std::string mode = mode_env;
  auto env = train::DistributedEnv::from_environment();
  train::CommunicatorOptions o{"gloo"};
  o.timeout = std::chrono::seconds(20);
  auto gloo = train::make_communicator(env, o);
  auto c = distributed_config(fs::path(out) / ("rank" + std::to_string(env.rank)));
  if (mode == "validate") {
    c.validation_episodes = 5;  // odd: the ranks score 3 and 2
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     validation_sampler(c), {"outer", "core"}, *gloo);
    const train::ValidationResult v = t.validate();
    std::ofstream(fs::path(out) / ("validation" + std::to_string(env.rank) + ".json")) << validation_json(v).dump();
    return;
  }
  if (mode == "train") {
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, *gloo);
    t.run(false);
    torch::save(flat_state(t), (fs::path(out) / ("weights" + std::to_string(env.rank) + ".pt")).string());
    return;
  }
  // "die": rank 1 disappears in the middle of the run (as a process
  // killed by the OOM killer would); rank 0 must stop with an error, not hang.
  c.iterations = 50;
  Recording counting(*gloo, [&](int calls) {
    if (env.rank == 1 && calls == 40) std::_Exit(3);
  });
  try {
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, counting);
    t.run(false);
  } catch (const iris::Error& e) {
    std::ofstream(fs::path(out) / ("error" + std::to_string(env.rank) + ".txt")) << e.what();
    std::_Exit(0);  // the process group's destructor may wait on the dead peer
  }
  std::_Exit(5);  // finishing a run whose peer died is a failure
}

namespace {
// Starts `n` worker processes of this binary and waits for them; returns their exit codes.
std::vector<int> run_workers(int n, const fs::path& dir, const std::string& mode, double timeout_s = 120) {
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const int port = iris::testing::free_port();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < n; ++rank) {
    std::vector<std::string> envs{"RANK=" + std::to_string(rank),
                                  "WORLD_SIZE=" + std::to_string(n),
                                  "LOCAL_RANK=" + std::to_string(rank),
                                  "MASTER_ADDR=127.0.0.1",
                                  "MASTER_PORT=" + std::to_string(port),
                                  "IRIS_TEST_WORKER_OUT=" + dir.string(),
                                  "IRIS_TEST_WORKER_MODE=" + mode,
                                  "OMP_NUM_THREADS=1"};
    for (char** e = environ; *e; ++e) {
      std::string s(*e);
      if (s.rfind("RANK=", 0) && s.rfind("WORLD_SIZE=", 0) && s.rfind("MASTER_", 0) && s.rfind("OMP_NUM_THREADS=", 0) &&
          s.rfind("LOCAL_", 0) && s.rfind("IRIS_TEST_WORKER", 0))
        envs.push_back(s);
    }
    std::vector<char*> envp;
    for (auto& s : envs) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string filter = "--gtest_filter=DistributedWorker.DISABLED_Run", disabled = "--gtest_also_run_disabled_tests";
    char* argv[] = {const_cast<char*>(self.c_str()), filter.data(), disabled.data(), nullptr};
    pid_t pid;
    if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp.data()) != 0) {
      ADD_FAILURE() << "cannot start a worker";
      return {};
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  const auto start = std::chrono::steady_clock::now();
  for (pid_t pid : pids) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
        for (pid_t p : pids) ::kill(p, SIGKILL);
        ADD_FAILURE() << "workers still running after " << timeout_s << " s: a hang";
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  return codes;
}
}  // namespace

TEST(Distributed, TwoGlooRanksMatchOneProcess) {
  fs::path dir = temp_dir("gloo");
  const auto codes = run_workers(2, dir, "train");
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << "worker failed";
  at::Tensor w0, w1;
  torch::load(w0, (dir / "weights0.pt").string());
  torch::load(w1, (dir / "weights1.pt").string());
  EXPECT_TRUE(at::equal(w0, w1)) << "ranks diverged";

  // One process with the same global batch sees the same episodes.
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto c = distributed_config(dir / "single");
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed), std::nullopt,
                   {"outer", "core"}, *comm);
  t.run(false);
  at::Tensor single = flat_state(t);
  const float diff = (single - w0).abs().max().item<float>();
  std::printf("max |single - distributed| weight difference after 3 steps: %g\n", diff);
  EXPECT_LT(diff, 1e-4);
  fs::remove_all(dir);
}

// Validation episodes are shared out among the ranks and summed once: two
// ranks report what one process scores over all of them.
TEST(Distributed, TwoRanksValidateTheSameEpisodesAsOneProcess) {
  fs::path dir = temp_dir("gloo_validation");
  const auto codes = run_workers(2, dir, "validate");
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << "worker failed";
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto c = distributed_config(dir / "single");
  c.validation_episodes = 5;
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                   validation_sampler(c), {"outer", "core"}, *comm);
  const Json single = validation_json(t.validate());
  ASSERT_GT(single["classes"].get<long>(), 5) << single.dump();
  ASSERT_EQ(single["by_dataset"].size(), 2u) << single.dump();
  for (int rank = 0; rank < 2; ++rank) {
    std::ifstream in(dir / ("validation" + std::to_string(rank) + ".json"));
    const Json j = Json::parse(in);
    EXPECT_EQ(j["classes"], single["classes"]) << "rank " << rank << ": " << j.dump();
    EXPECT_NEAR(j["dice"].get<double>(), single["dice"].get<double>(), 1e-6) << "rank " << rank;
    for (const auto& [name, value] : single["by_dataset"].items())
      EXPECT_NEAR(j["by_dataset"][name].get<double>(), value.get<double>(), 1e-6) << "rank " << rank << " " << name;
  }
  fs::remove_all(dir);
}

TEST(Distributed, ARankThatDiesEndsTheOthersWithAnErrorNotAHang) {
  fs::path dir = temp_dir("gloo_death");
  const auto start = std::chrono::steady_clock::now();
  const auto codes = run_workers(2, dir, "die", 90);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(codes.size(), 2u);
  EXPECT_EQ(codes[1], 3) << "rank 1 should have died on purpose";
  EXPECT_EQ(codes[0], 0) << "rank 0 should have stopped with an iris::Error";
  std::ifstream in(dir / "error0.txt");
  const std::string message((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(message.find("train.distributed_timeout_s"), std::string::npos) << message;
  EXPECT_NE(message.find("another rank has probably stopped"), std::string::npos) << message;
  EXPECT_LT(seconds, 60) << "the surviving rank took " << seconds << " s to notice";
  fs::remove_all(dir);
}

TEST(Trainer, TransferConfigsFreezeAndScaleParameterGroups) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  const std::string dir = std::string(IRIS_SOURCE_DIR) + "/configs/train/";
  auto stage1 = train::TrainConfig::from_config(ConfigMap::load_yaml_file(dir + "transfer_stage1_frozen_encoder.yaml").subtree("train"));
  EXPECT_EQ(stage1.init_from, "runs/pretrained/model.iris");
  stage1.output_dir = temp_dir("transfer").string();
  stage1.episodes.patch = 32;
  // Stage 1 starts from a trained model's weights (here: a seeded tiny one).
  model::IrisModel pretrained;
  pretrained.config = tiny_model();
  torch::manual_seed(99);
  pretrained.net = model::IrisNet(pretrained.config);
  pretrained.class_names = {"core", "spleen"};  // ids differ from this run's {"outer", "core"}
  stage1.init_from = stage1.output_dir + "/pretrained.iris";
  model::save_model(pretrained, stage1.init_from);
  train::Trainer t(stage1, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), stage1.episodes, 0),
                   std::nullopt, {"outer", "core"}, *comm);
  long frozen = 0, trainable = 0;
  for (const auto& p : t.net()->named_parameters()) {
    const bool encoder = p.key().rfind("encoder.", 0) == 0;
    EXPECT_EQ(p.value().requires_grad(), !encoder) << p.key();
    (encoder ? frozen : trainable)++;
  }
  EXPECT_GT(frozen, 0);
  EXPECT_GT(trainable, 0);
  auto theirs = pretrained.net->named_parameters();
  for (const auto& p : t.net()->named_parameters()) EXPECT_TRUE(at::equal(p.value(), theirs[p.key()])) << p.key();
  // Memory-bank rows follow class names: "core" moves from id 0 to id 1;
  // "outer" is new and keeps this run's fresh row.
  for (size_t s = 0; s < t.net()->memory_bank.size(); ++s) {
    EXPECT_TRUE(at::equal(t.net()->memory_bank[s][1], pretrained.net->memory_bank[s][0])) << s;
    EXPECT_FALSE(at::equal(t.net()->memory_bank[s][0], pretrained.net->memory_bank[s][0])) << s;
  }
  // Weights of another architecture are refused, naming file and parameter.
  auto other = stage1;
  model::IrisModel small;
  small.config = model::preset("small");
  small.net = model::IrisNet(small.config);
  other.init_from = stage1.output_dir + "/small.iris";
  model::save_model(small, other.init_from);
  try {
    train::Trainer bad(other, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), other.episodes, 0),
                       std::nullopt, {"outer", "core"}, *comm);
    ADD_FAILURE() << "weights of another architecture were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("small.iris"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("settings differ"), std::string::npos) << e.what();
  }
  auto stage2 = train::TrainConfig::from_config(ConfigMap::load_yaml_file(dir + "transfer_stage2_deep_encoder.yaml").subtree("train"));
  ASSERT_EQ(stage2.param_groups.size(), 2u);
  EXPECT_DOUBLE_EQ(stage2.param_groups[0].lr_scale, 0.01);
  EXPECT_TRUE(stage2.param_groups[1].freeze);
  EXPECT_EQ(stage2.init_from, "runs/transfer_stage1/model.iris");
  fs::remove_all(stage1.output_dir);
}

TEST(Trainer, PrefetchingWorkersGiveTheSameLossesAsSamplingInline) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto losses = [&](int workers, int depth) {
    fs::path dir = temp_dir("prefetch" + std::to_string(workers));
    auto c = tiny_train_config(dir);
    c.loader_workers = workers;
    c.prefetch = depth;
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, *comm);
    t.run(false);
    std::vector<double> out;
    for (const auto& m : t.history()) {
      EXPECT_GE(m.data_seconds, 0.0);
      EXPECT_LE(m.data_seconds, m.seconds);
      out.push_back(m.loss);
    }
    fs::remove_all(dir);
    return out;
  };
  const auto inline_losses = losses(0, 1);
  ASSERT_EQ(inline_losses.size(), 4u);
  EXPECT_EQ(losses(3, 3), inline_losses);
}

TEST(Autocast, GuardRunsConvolutionsInBf16AndRestoresFloat32) {
  auto x = torch::randn({1, 2, 6, 6, 6});
  auto w = torch::randn({3, 2, 3, 3, 3});
  at::Tensor inside, fp32 = at::conv3d(x, w);
  {
    compat::AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16, true);
    inside = at::conv3d(x, w);
  }
  EXPECT_EQ(inside.scalar_type(), at::kBFloat16);
  EXPECT_EQ(at::conv3d(x, w).scalar_type(), at::kFloat);
  // bf16 keeps ~3 significant digits.
  EXPECT_LT((inside.to(at::kFloat) - fp32).abs().max().item<double>(), 0.05 * fp32.abs().max().item<double>());
  {
    compat::AutocastGuard off(c10::DeviceType::CPU, at::kBFloat16, false);
    EXPECT_EQ(at::conv3d(x, w).scalar_type(), at::kFloat);
  }
}

TEST(Trainer, Bf16AutocastTrainsWithFloat32WeightsAndNearFloat32Losses) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto run = [&](bool bf16) {
    fs::path dir = temp_dir(bf16 ? "bf16" : "fp32");
    auto c = tiny_train_config(dir);
    c.iterations = 2;
    c.bf16 = bf16;
    auto t = std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                              data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed), std::nullopt,
                                              std::vector<std::string>{"outer", "core"}, *comm);
    EXPECT_EQ(t->run(false), train::TrainOutcome::kFinished);
    for (const auto& p : t->net()->parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
    fs::remove_all(dir);
    return t->history();
  };
  const auto half = run(true), full = run(false);
  ASSERT_EQ(half.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(std::isfinite(half[i].loss));
  // Same episode, same initial weights: the first loss differs only by bf16 rounding.
  EXPECT_NE(half[0].loss, full[0].loss);
  EXPECT_NEAR(half[0].loss, full[0].loss, 0.05);
}

TEST(Trainer, WritesTensorBoardScalarsOfEveryLoggedStep) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  fs::path dir = temp_dir("tb");
  auto c = tiny_train_config(dir);
  c.iterations = 3;
  auto t = std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                            data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed), std::nullopt,
                                            std::vector<std::string>{"outer", "core"}, *comm);
  t->run(false);
  const auto history = t->history();
  t.reset();  // flushes the writer, as at process exit
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(dir / "tensorboard")) files.push_back(f.path());
  ASSERT_EQ(files.size(), 1u);
  std::vector<float> losses;
  std::vector<long> steps;
  for (const auto& e : train::read_tensorboard_scalars(files[0].string()))
    if (e.tag == "train/loss") {
      losses.push_back(e.value);
      steps.push_back(e.step);
    }
  ASSERT_EQ(losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(losses[i], static_cast<float>(history[i].loss));
    EXPECT_EQ(steps[i], history[i].iteration);
  }
  fs::remove_all(dir);
}

// The Dice loss of each dataset, beside the overall one: a dataset whose
// tasks the network does not learn is visible even when the others bring the
// mean down. With a learning rate of ~0 the network is its initialisation,
// which predicts p in (0, 1) everywhere: a class covering the whole patch has
// Dice 2 sum(p) / (sum(p) + N), well above 0, and a class of 8 voxels in a
// 32^3 patch (or none, when the patch misses it) has Dice ~0.
TEST(Trainer, ReportsTheDiceLossOfEachDataset) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto one_case = [](const std::string& name, const at::Tensor& labels, long id) {
    data::LoadedDataset d;
    d.name = name;
    torch::manual_seed(id);
    data::CaseVolume v;
    v.name = name + "0";
    v.image = torch::randn(labels.sizes());
    v.labels = labels;
    v.classes = {1};
    d.cases.push_back(v);
    d.class_ids = {{1, id}};
    return d;
  };
  at::Tensor speck = torch::zeros({40, 40, 40}, torch::kLong);
  speck.narrow(0, 19, 2).narrow(1, 19, 2).narrow(2, 19, 2).fill_(1);
  std::vector<data::LoadedDataset> two = {one_case("whole", torch::ones({40, 40, 40}, torch::kLong), 0),
                                          one_case("speck", speck, 1)};
  fs::path dir = temp_dir("by_dataset");
  auto c = tiny_train_config(dir);
  c.iterations = 8;
  c.episodes.max_classes = 1;
  c.lr = 1e-12;
  c.weight_ema = 0;
  auto t = std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(two, c.episodes, c.seed),
                                            std::nullopt, std::vector<std::string>{"whole", "speck"}, *comm);
  t->run(false);
  t.reset();
  std::map<std::string, std::vector<double>> seen;
  std::ifstream metrics(dir / "metrics.jsonl");
  std::string line;
  long lines = 0;
  while (std::getline(metrics, line)) {
    ++lines;
    const Json j = Json::parse(line);
    ASSERT_TRUE(j.contains("dice_loss_by_dataset")) << line;
    for (const auto& [name, value] : j["dice_loss_by_dataset"].items()) seen[name].push_back(value.get<double>());
  }
  EXPECT_EQ(lines, 8);
  ASSERT_EQ(seen.size(), 2u);
  ASSERT_FALSE(seen["whole"].empty());
  ASSERT_FALSE(seen["speck"].empty());
  for (double v : seen["whole"]) EXPECT_LT(v, 0.8);
  for (double v : seen["speck"]) EXPECT_GT(v, 0.95);
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(dir / "tensorboard")) files.push_back(f.path());
  ASSERT_EQ(files.size(), 1u);
  std::map<std::string, long> tags;
  for (const auto& e : train::read_tensorboard_scalars(files[0].string())) ++tags[e.tag];
  EXPECT_EQ(tags["train/dice_loss/whole"], static_cast<long>(seen["whole"].size()));
  EXPECT_EQ(tags["train/dice_loss/speck"], static_cast<long>(seen["speck"].size()));
  fs::remove_all(dir);

  // Over several steps a line reports the mean since the previous line: with
  // one dataset whose every episode holds one valid class (the whole patch),
  // that is the mean of the steps' own Dice losses.
  fs::path dir2 = temp_dir("by_dataset_mean");
  auto c2 = tiny_train_config(dir2);
  c2.iterations = 6;
  c2.log_every = 3;
  c2.episodes.max_classes = 1;
  auto t2 = std::make_unique<train::Trainer>(c2, tiny_model(), ConfigMap{},
                                             data::EpisodeSampler({two[0]}, c2.episodes, c2.seed), std::nullopt,
                                             std::vector<std::string>{"whole"}, *comm);
  t2->run(false);
  const auto history = t2->history();
  t2.reset();
  ASSERT_EQ(history.size(), 6u);
  std::ifstream metrics2(dir2 / "metrics.jsonl");
  std::vector<double> logged;
  while (std::getline(metrics2, line)) logged.push_back(Json::parse(line)["dice_loss_by_dataset"]["whole"].get<double>());
  ASSERT_EQ(logged.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    const double mean = (history[3 * k].dice_loss + history[3 * k + 1].dice_loss + history[3 * k + 2].dice_loss) / 3;
    EXPECT_NEAR(logged[k], mean, 1e-5) << "line " << k;
  }
  fs::remove_all(dir2);
}

// The weight EMA also averages the memory bank, as the author's trainers
// average model.buffers(): after each step the shadow bank is
// decay * shadow + (1 - decay) * the live bank, read here from the numbered
// checkpoints of three steps, and the exported model ships the shadow.
TEST(Trainer, TheWeightEmaAlsoAveragesTheMemoryBank) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  const fs::path dir = temp_dir("buffer_ema");
  train::TrainConfig c = tiny_train_config(dir);
  c.iterations = 3;
  c.checkpoint_every = 1;
  c.keep_checkpoints = 3;
  c.weight_ema = 0.6;
  ASSERT_TRUE(c.update_memory_bank);
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                   std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
  t.run(false);
  const long stages = tiny_model().prior_stages;
  ASSERT_GT(stages, 0);
  std::vector<TensorFile> steps;
  for (int k = 1; k <= 3; ++k)
    steps.push_back(TensorFile::load((dir / "checkpoints" / ("iter_000000" + std::to_string(k) + ".ckpt")).string(),
                                     "iris-checkpoint-v2", "checkpoint"));
  const model::IrisModel exported = model::load_model(t.final_model_path());
  for (long i = 0; i < stages; ++i) {
    const std::string bank = "task_prior_" + std::to_string(i);
    for (int k = 1; k < 3; ++k) {
      const at::Tensor before = steps[k - 1].get("ema_buffer/" + bank), live = steps[k].get("buffer/" + bank);
      const at::Tensor expected = 0.6 * before + 0.4 * live;
      EXPECT_TRUE(at::allclose(steps[k].get("ema_buffer/" + bank), expected, 1e-5, 1e-6)) << bank << " step " << k + 1;
      EXPECT_GT((live - before).abs().max().item<double>(), 1e-4) << bank << ": the bank did not move";
    }
    const at::Tensor shadow = steps[2].get("ema_buffer/" + bank);
    EXPECT_TRUE(at::equal(exported.net->named_buffers()[bank], shadow)) << bank << ": the export is not the shadow bank";
    EXPECT_GT((shadow - steps[2].get("buffer/" + bank)).abs().max().item<double>(), 1e-4)
        << bank << ": shadow and live bank agree, so the test cannot tell them apart";
  }
}

// Validation scores the weights that are shipped (the EMA shadow), overall
// and per validation dataset. The expectations are Dice counted here, with
// the exported model file, on the same validation episodes.
TEST(Trainer, ValidatesTheExportedWeightsOverallAndPerDataset) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  fs::path dir = temp_dir("validation");
  auto c = distributed_config(dir);  // large steps: the raw weights move away from their average
  c.iterations = 4;
  c.validate_every = 4;
  c.log_every = 2;
  c.validation_episodes = 6;
  c.weight_ema = 0.7;
  auto t = std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                            data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                                            validation_sampler(c), std::vector<std::string>{"outer", "core"}, *comm);
  t->run(false);
  const model::IrisModel exported = model::load_model(t->final_model_path());

  // Dice per dataset of a network on the validation episodes, counted here.
  auto score = [&](model::IrisNet& net) {
    at::NoGradGuard no_grad;
    net->eval();
    const data::EpisodeSampler episodes = validation_sampler(c);
    std::map<std::string, std::pair<double, long>> per;
    double all = 0;
    long n = 0;
    for (long e = 0; e < c.validation_episodes; ++e) {
      const data::EpisodeBatch b = episodes.sample(e, 1);
      const std::string name = b.dataset[0] == 0 ? "synthetic" : "mirrored";
      const at::Tensor pred = net->forward(b.query, b.reference, b.reference_masks).gt(0);
      for (long k = 0; k < b.valid.size(1); ++k) {
        if (b.valid[0][k].item<float>() < 0.5) continue;
        const double hit = (pred[0][k] & b.query_masks[0][k].gt(0.5)).sum().item<double>();
        const double both = pred[0][k].sum().item<double>() + b.query_masks[0][k].gt(0.5).sum().item<double>();
        const double dice = both > 0 ? 2 * hit / both : 1.0;
        per[name].first += dice;
        ++per[name].second;
        all += dice;
        ++n;
      }
    }
    Json j = {{"dice", all / n}, {"classes", n}};
    for (const auto& [name, v] : per) j["by_dataset"][name] = v.first / v.second;
    return j;
  };
  model::IrisNet shipped = exported.net;
  shipped->set_channels_last(true);  // the trainer's memory format: the same sums to the last bit
  const Json expected = score(shipped);
  const Json raw = score(t->net());
  t.reset();

  Json logged;
  long lines = 0;
  std::ifstream metrics(dir / "metrics.jsonl");
  std::string line;
  while (std::getline(metrics, line)) {
    const Json j = Json::parse(line);
    ++lines;
    if (j.contains("val_dice")) logged = j;
  }
  EXPECT_EQ(lines, 2);
  ASSERT_FALSE(logged.is_null()) << "no line with val_dice";
  EXPECT_EQ(logged["iteration"].get<long>(), 3);
  ASSERT_EQ(expected["by_dataset"].size(), 2u) << expected.dump();
  EXPECT_NEAR(logged["val_dice"].get<double>(), expected["dice"].get<double>(), 1e-5)
      << "logged " << logged.dump() << "\nexported weights " << expected.dump() << "\nraw weights " << raw.dump();
  ASSERT_TRUE(logged.contains("val_dice_by_dataset")) << logged.dump();
  for (const auto& [name, value] : expected["by_dataset"].items())
    EXPECT_NEAR(logged["val_dice_by_dataset"][name].get<double>(), value.get<double>(), 1e-5) << name;
  // The test can tell the two sets of weights apart.
  double apart = 0;
  for (const auto& [name, value] : expected["by_dataset"].items())
    apart = std::max(apart, std::abs(value.get<double>() - raw["by_dataset"][name].get<double>()));
  EXPECT_GT(apart, 1e-3) << "raw and exported weights score alike: " << raw.dump();

  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(dir / "tensorboard")) files.push_back(f.path());
  ASSERT_EQ(files.size(), 1u);
  std::map<std::string, long> tags;
  for (const auto& e : train::read_tensorboard_scalars(files[0].string())) ++tags[e.tag];
  EXPECT_EQ(tags["val/dice"], 1);
  EXPECT_EQ(tags["val/dice/synthetic"], 1);
  EXPECT_EQ(tags["val/dice/mirrored"], 1);
  fs::remove_all(dir);
}

// A validation in the middle of a run swaps the EMA weights in and out and
// switches to eval mode: training afterwards must be what it is without it.
TEST(Trainer, ValidatingInTheMiddleLeavesTrainingUnchanged) {
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto run = [&](long validate_every, const std::string& name) {
    fs::path dir = temp_dir(name);
    auto c = distributed_config(dir);
    c.iterations = 4;
    c.validate_every = validate_every;
    c.validation_episodes = 2;
    c.weight_ema = 0.7;
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     validation_sampler(c), {"outer", "core"}, *comm);
    t.run(false);
    std::vector<double> losses;
    for (const auto& m : t.history()) losses.push_back(m.loss);
    const at::Tensor state = flat_state(t);
    long validations = 0;
    std::ifstream metrics(dir / "metrics.jsonl");
    std::string line;
    while (std::getline(metrics, line)) validations += Json::parse(line).contains("val_dice");
    fs::remove_all(dir);
    return std::make_tuple(losses, state, validations);
  };
  const auto [plain_losses, plain_state, none] = run(0, "no_validation");
  const auto [losses, state, validations] = run(1, "every_step");
  EXPECT_EQ(none, 0);
  EXPECT_EQ(validations, 4);
  EXPECT_EQ(losses, plain_losses);
  EXPECT_TRUE(at::equal(state, plain_state)) << "weights differ by " << (state - plain_state).abs().max().item<float>();
}

// ---- collectives, devices, micro-batches, resume ---------------------------

TEST(Communicator, RefusesTensorsOffItsDevice) {
  // A communicator of cuda:0 (constructed without a GPU: nothing runs there).
  train::CommunicatorOptions o{"none"};
  o.device = c10::Device(c10::kCUDA, 0);
  auto comm = train::make_communicator({}, o);
  at::Tensor host = at::zeros({3});
  std::string msg = iris::testing::error_of([&] { comm->allreduce_sum(host); });
  EXPECT_NE(msg.find("on cpu but this communicator (none) runs on cuda:0"), std::string::npos) << msg;
  std::vector<at::Tensor> many{host};
  msg = iris::testing::error_of([&] { comm->broadcast(many); });
  EXPECT_NE(msg.find("broadcast"), std::string::npos) << msg;
  // A trainer refuses a communicator of another device than its own.
  auto none = train::make_communicator({}, train::CommunicatorOptions{"none"});
  Recording claimed(*none, c10::Device(c10::kCUDA, 0));
  fs::path dir = temp_dir("device_rule");
  auto c = tiny_train_config(dir);
  msg = iris::testing::error_of([&] {
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, claimed);
  });
  EXPECT_NE(msg.find("the communicator runs on cuda:0 but training on cpu"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Communicator, ANamedBackendRunsEveryCollectiveOnOneRank) {
  fs::path dir = temp_dir("one_rank");
  auto run = [&](train::Communicator& comm, const std::string& name) {
    auto c = tiny_train_config(dir / name);
    c.iterations = 3;
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, comm);
    EXPECT_EQ(t.run(false), train::TrainOutcome::kFinished);
    std::vector<double> losses;
    for (const auto& m : t.history()) losses.push_back(m.loss);
    return losses;
  };
  auto none = train::make_communicator({}, train::CommunicatorOptions{"none"});
  const auto reference = run(*none, "none");
  // Every collective of the engine passes through, with tensors on the training device.
  Recording recording(*none);
  EXPECT_EQ(run(recording, "recording"), reference);
  EXPECT_EQ(recording.devices, (std::set<std::string>{"cpu"}));
  // The gradients (one bucket holds all of the tiny model's) are all-reduced once per step.
  int64_t parameters = 0;
  for (const auto& p : model::IrisNet(tiny_model())->parameters()) parameters += p.numel();
  EXPECT_EQ(std::count(recording.reduced.begin(), recording.reduced.end(), parameters), 3);
  // ... and per step the valid-class count and the stop flag (one number each), the memory-bank ids and tokens.
  EXPECT_EQ(std::count(recording.reduced.begin(), recording.reduced.end(), 1), 2 * 3);
  EXPECT_GE(recording.calls, 1 + 3 * 5) << recording.calls;
  // A real Gloo process group at world size 1 (what train.distributed: nccl is on one GPU).
  train::DistributedEnv env;
  env.master_port = iris::testing::free_port();
  auto gloo = train::make_communicator(env, train::CommunicatorOptions{"gloo"});
  EXPECT_EQ(gloo->backend(), "gloo");
  EXPECT_EQ(run(*gloo, "gloo"), reference);
  fs::remove_all(dir);
}

TEST(Trainer, MicroBatchesAccumulateToTheSameStep) {
  fs::path dir = temp_dir("micro");
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto run = [&](long micro) {
    auto c = distributed_config(dir / ("micro" + std::to_string(micro)));
    c.batch = 4;
    c.micro_batch = micro;
    auto t = std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                              data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                                              std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
    EXPECT_EQ(t->run(false), train::TrainOutcome::kFinished);
    return std::make_pair(t->history(), flat_state(*t));
  };
  const auto [whole_history, whole] = run(0);
  for (long micro : {1L, 3L}) {
    const auto [history, weights] = run(micro);
    ASSERT_EQ(history.size(), whole_history.size());
    // The first step's loss (no update yet) agrees to float rounding. Later
    // ones follow AdamW steps at lr 0.05 from gradients summed in another
    // order: LibTorch 2.15's oneDNN picks its CPU kernels by batch size, and
    // the updates carry those last-bit differences on (measured: losses
    // within 8e-5, weights within 2.2e-4; LibTorch 1.13 gave 1e-5 / 1e-4).
    EXPECT_NEAR(history[0].loss, whole_history[0].loss, 1e-5) << micro;
    for (size_t i = 1; i < history.size(); ++i) EXPECT_NEAR(history[i].loss, whole_history[i].loss, 3e-4) << micro;
    EXPECT_LT((weights - whole).abs().max().item<float>(), 1e-3) << micro;
  }
  fs::remove_all(dir);
}

TEST(Trainer, MicroBatchesSendTheGradientsOncePerStep) {
  // One rank through a Recording communicator: with micro-batches the
  // gradient all-reduce happens once per step (not once per pass).
  fs::path dir = temp_dir("micro_comm");
  auto none = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto count_calls = [&](long micro) {
    Recording recording(*none);
    auto c = distributed_config(dir / std::to_string(micro));
    c.batch = 4;
    c.micro_batch = micro;
    c.update_memory_bank = false;
    train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                     std::nullopt, {"outer", "core"}, recording);
    t.run(false);
    return std::make_pair(recording.calls, recording.reduced.size());
  };
  const auto whole = count_calls(0);
  EXPECT_EQ(count_calls(1), whole);
  EXPECT_EQ(count_calls(3), whole);
  fs::remove_all(dir);
}

TEST(BatchProbe, TakesTheLargestSizeThatFitsWithAMargin) {
  auto oom = [](long limit) {
    return [limit](long size) {
      if (size > limit) throw c10::OutOfMemoryError({__func__, __FILE__, 0}, "CUDA out of memory. Tried to allocate");
    };
  };
  double peak = 0;
  auto reset = [&] { peak = 0; };
  train::BatchProbeOptions o;
  o.largest = 8;
  // Sizes above 5 run out of memory; 5 fits at 95 % (above the 10 % margin), 4 at 80 %.
  auto step = [&](long size) {
    oom(5)(size);
    peak = size == 5 ? 0.95 : 0.8;
  };
  const auto r = train::probe_micro_batch(step, [&] { return peak; }, reset, o);
  EXPECT_EQ(r.micro_batch, 4);
  ASSERT_EQ(r.log.size(), 5u);
  EXPECT_NE(r.log[0].find("micro-batch 8: out of memory"), std::string::npos) << r.log[0];
  EXPECT_NE(r.log[3].find("above the safety margin"), std::string::npos) << r.log[3];
  // The same from the message alone (LibTorch 1.13 raises a plain c10::Error).
  auto plain = [](long size) {
    if (size > 2) throw c10::Error({__func__, __FILE__, 0}, "CUDA out of memory. Tried to allocate 2 GiB");
  };
  EXPECT_EQ(train::probe_micro_batch(plain, [] { return 0.0; }, [] {}, o).micro_batch, 2);
  // Other errors are not out-of-memory: they propagate.
  auto broken = [](long) { throw std::runtime_error("shape mismatch"); };
  EXPECT_THROW(train::probe_micro_batch(broken, [] { return 0.0; }, [] {}, o), std::runtime_error);
  // Nothing fits: an error naming the key.
  const std::string msg = iris::testing::error_of(
      [&] { train::probe_micro_batch(oom(0), [] { return 0.0; }, [] {}, o); });
  EXPECT_NE(msg.find("train.micro_batch"), std::string::npos) << msg;
}

TEST(Trainer, ResumeFindsTheNewestIntactCheckpoint) {
  fs::path dir = temp_dir("resume_auto");
  auto comm = train::make_communicator({}, train::CommunicatorOptions{"none"});
  auto c = tiny_train_config(dir);
  c.iterations = 6;
  c.checkpoint_every = 2;
  c.keep_checkpoints = 5;
  auto make = [&] {
    return std::make_unique<train::Trainer>(c, tiny_model(), ConfigMap{},
                                            data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed),
                                            std::nullopt, std::vector<std::string>{"outer", "core"}, *comm);
  };
  auto full = make();
  full->stop_after(3);
  ASSERT_EQ(full->run(false), train::TrainOutcome::kPreempted);
  const fs::path ckpt = dir / "checkpoints";
  ASSERT_TRUE(fs::exists(ckpt / "iter_0000002.ckpt"));
  // A kill -9 mid-write leaves a temporary; a cut copy stands for a damaged last.ckpt.
  std::ofstream(ckpt / ".last.tmp999999999_3.ckpt") << "half a checkpoint";
  fs::resize_file(ckpt / "last.ckpt", fs::file_size(ckpt / "last.ckpt") / 2);
  std::string msg = iris::testing::error_of([&] { make()->run(train::ResumeMode::kLast); });
  EXPECT_NE(msg.find("last.ckpt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("iter_0000002.ckpt is intact: resume from it with resume=auto"), std::string::npos) << msg;
  auto resumed = make();
  ASSERT_EQ(resumed->run(train::ResumeMode::kAuto), train::TrainOutcome::kFinished);
  EXPECT_EQ(resumed->history().front().iteration, 2);
  EXPECT_FALSE(fs::exists(ckpt / ".last.tmp999999999_3.ckpt"));
  for (const auto& e : fs::directory_iterator(ckpt))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  // --resume=auto with no checkpoint at all starts afresh.
  fs::path fresh = temp_dir("resume_fresh");
  c.output_dir = fresh.string();
  c.iterations = 1;
  EXPECT_EQ(make()->run(train::ResumeMode::kAuto), train::TrainOutcome::kFinished);
  fs::remove_all(dir);
  fs::remove_all(fresh);
}

// ---- in-context pretraining from label maps (tasks: regions) ---------------
namespace {
// A 40^3 "atlas": 27 box regions in a 3x3x3 arrangement on a brain-like
// image; regions 13 and 14 are held out.
std::vector<data::LoadedDataset> atlas_dataset(double synthetic) {
  data::LoadedDataset d;
  d.name = "atlas";
  d.regions.enabled = true;
  d.regions.held_out = {13, 14};
  d.regions.union_max = 3;
  d.regions.union_probability = 0.7;
  d.regions.min_voxels = 8;
  d.regions.synthetic = synthetic;
  d.regions.deformation = 3.0;
  const long n = 40;
  auto r = torch::arange(n, torch::kLong);
  auto band = [](const at::Tensor& t) { return at::div(t - 2, 12, "floor").clamp(0, 2); };
  auto z = band(r.view({n, 1, 1})), y = band(r.view({1, n, 1})), x = band(r.view({1, 1, n}));
  at::Tensor inside = (r.view({n, 1, 1}) >= 2) & (r.view({n, 1, 1}) < 38) & (r.view({1, n, 1}) >= 2) &
                      (r.view({1, n, 1}) < 38) & (r.view({1, 1, n}) >= 2) & (r.view({1, 1, n}) < 38);
  data::CaseVolume v;
  v.name = "atlas0";
  v.labels = at::where(inside, z * 9 + y * 3 + x + 1, at::zeros({}, at::kLong));
  torch::manual_seed(11);
  v.image = v.labels.to(at::kFloat).remainder(5) * 0.3 + 0.1 * torch::randn({n, n, n});
  d.cases.push_back(v);
  return {d};
}
}  // namespace

TEST(RegionEpisodes, SameIndexSameEpisodeAndQueryAndReferenceDeformDifferently) {
  data::EpisodeOptions o;
  o.patch = 32;
  o.max_classes = 3;
  o.augment.intensity_probability = 0;
  o.augment.blur_probability = 0;
  data::EpisodeSampler s(atlas_dataset(0.5), o, 7);
  const auto a = s.sample(12, 2), b = s.sample(12, 2), c = s.sample(13, 2);
  EXPECT_TRUE(at::equal(a.query, b.query));
  EXPECT_TRUE(at::equal(a.reference_masks, b.reference_masks));
  EXPECT_EQ(a.task_labels, b.task_labels);
  EXPECT_FALSE(at::equal(a.query, c.query));
  // The same brain, but query and reference are sampled through different
  // affines and deformations: their masks never coincide.
  long compared = 0;
  for (long e = 0; e < 20; ++e) {
    const auto batch = s.sample(e, 1);
    for (long k = 0; k < 3; ++k) {
      if (batch.valid[0][k].item<float>() < 0.5) continue;
      EXPECT_FALSE(at::equal(batch.query_masks[0][k], batch.reference_masks[0][k])) << e;
      ++compared;
    }
  }
  EXPECT_GT(compared, 10);
}

TEST(RegionEpisodes, HeldOutRegionsNeverEnterATaskAndUnionsAreOfNeighbours) {
  data::EpisodeOptions o;
  o.patch = 16;
  o.max_classes = 3;
  o.augment.enabled = false;
  data::EpisodeSampler s(atlas_dataset(0.0), o, 3);
  const auto& index = s.region_index(0, 0);
  EXPECT_EQ(index.regions.size(), 25u);  // 27 regions, 13 and 14 held out
  long tasks = 0, unions = 0;
  for (long e = 0; e < 3000; ++e) {
    const auto batch = s.sample(e, 1);
    for (const auto& task : batch.task_labels[0]) {
      if (task.empty()) continue;
      ++tasks;
      for (long v : task) {
        ASSERT_NE(v, 13) << "episode " << e;
        ASSERT_NE(v, 14) << "episode " << e;
      }
      if (task.size() > 1) {
        ++unions;
        // Every region of a union touches another one of it.
        for (long v : task) {
          const auto& n = index.neighbours.at(v);
          EXPECT_TRUE(std::any_of(task.begin(), task.end(),
                                  [&](long w) { return w != v && std::find(n.begin(), n.end(), w) != n.end(); }));
        }
      }
    }
  }
  EXPECT_GT(tasks, 3000);
  EXPECT_GT(unions, 500);
}

TEST(RegionEpisodes, GeneratedImagesHaveTheDrawnMeanPerRegion) {
  const long n = 30;
  at::Tensor index = at::div(at::arange(n * n * n, at::kLong).reshape({n, n, n}), n * n * n / 6, "floor").clamp_max(5);
  data::SynthOptions o;
  o.bias_field = false;
  o.blur_sigma_max = 0;
  o.noise_std_max = 0;
  std::vector<double> means;
  const at::Tensor image = data::synthesize_image(index, 6, 42, o, &means);
  ASSERT_EQ(means.size(), 6u);
  // The image is z-scored (an affine map of the drawn values): fit that map
  // over the five regions and compare every region's mean with it.
  std::vector<double> measured;
  for (long k = 1; k < 6; ++k) measured.push_back(image.masked_select(index == k).mean().item<double>());
  double mx = 0, my = 0, sxx = 0, sxy = 0;
  for (long k = 0; k < 5; ++k) mx += means[k + 1] / 5, my += measured[k] / 5;
  for (long k = 0; k < 5; ++k) {
    sxx += (means[k + 1] - mx) * (means[k + 1] - mx);
    sxy += (means[k + 1] - mx) * (measured[k] - my);
  }
  const double slope = sxy / sxx, intercept = my - slope * mx;
  ASSERT_GT(slope, 0);
  for (long k = 0; k < 5; ++k)
    // Per-region noise is at most 0.08 of the [0, 1] range, averaged over 4500 voxels.
    EXPECT_NEAR(measured[k], intercept + slope * means[k + 1], 0.01 * slope) << k + 1;
  EXPECT_TRUE(at::equal(image, data::synthesize_image(index, 6, 42, o)));
  EXPECT_FALSE(at::equal(image, data::synthesize_image(index, 6, 43, o)));
}

// The masks of a region episode lie on their regions in its image: in the
// box atlas every region has one intensity (region % 5 * 0.3, plus noise),
// so inside a one-region task's query and reference masks the image is that
// value, away from the region's border (the resampling blurs the border).
TEST(RegionEpisodes, MasksLieOnTheirRegionsInTheirImages) {
  data::EpisodeOptions o;
  o.patch = 32;
  o.max_classes = 3;
  o.augment.intensity_probability = 0;
  o.augment.blur_probability = 0;
  data::EpisodeSampler s(atlas_dataset(0.0), o, 5);
  long checked = 0;
  double worst = 0;
  for (long e = 0; e < 60; ++e) {
    const auto batch = s.sample(e, 1);
    for (long k = 0; k < 3; ++k) {
      const auto& task = batch.task_labels[0][k];
      if (task.size() != 1 || batch.valid[0][k].item<float>() < 0.5) continue;
      const double expected = (task[0] % 5) * 0.3;
      for (const auto& [image, masks] : {std::pair{batch.query, batch.query_masks}, std::pair{batch.reference, batch.reference_masks}}) {
        // The mask eroded by one voxel (6-neighbours), so border blur does not count.
        const at::Tensor m = masks[0][k].gt(0.5).unsqueeze(0).unsqueeze(0).to(at::kFloat);
        const at::Tensor eroded = at::max_pool3d(1 - m, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}).lt(0.5)[0][0];
        if (eroded.sum().item<long>() < 20) continue;
        // The image is z-scored per episode: compare with the region's rank
        // among intensities instead, through the median inside the mask.
        const at::Tensor inside = image[0][0].masked_select(eroded);
        const double spread = inside.std().item<double>(), all = image[0][0].std().item<double>();
        EXPECT_LT(spread, 0.35 * all) << "episode " << e << " region " << task[0] << " (value " << expected << ")";
        ++checked;
        worst = std::max(worst, spread / all);
      }
    }
  }
  std::cout << "largest spread inside a mask / over the patch: " << worst << std::endl;
  EXPECT_GT(checked, 30);
}

// Anatomy held out under every atlas's name (held_out_anatomy), on real
// atlases of Colin27 at the demo model's 4 mm: the Brodmann map has areas
// that are mostly AAL amygdala and parahippocampal gyrus (28: 78 %, 34: 68 %
// of their voxels at 1 mm, measured with numpy on the mricron files), which
// plain held_out values of AAL do not keep out of the tasks.
TEST(RegionEpisodes, AnatomyHeldOutUnderAnotherAtlasNeverEntersATask) {
  const std::string T = iris::testing::kMricronTemplates;
  for (const char* f : {"ch2.nii.gz", "brodmann.nii.gz", "aal.nii.gz"}) REQUIRE_DATA(T + f);
  const std::string yaml =
      "datasets:\n"
      "  brodmann:\n"
      "    layout: list\n"
      "    root: " + T + "\n"
      "    split: [1, 0, 0]\n"
      "    tasks: regions\n"
      "    union_max: 4\n"
      "    union_probability: 0.5\n"
      "    held_out_anatomy: aal.nii.gz\n"
      "    held_out_anatomy_values: [37, 38, 39, 40, 41, 42]\n"
      "    held_out_anatomy_fraction: 0.15\n"
      "    cases: [\"ch2.nii.gz|brodmann.nii.gz\"]\n";
  auto specs = data::datasets_from_config(ConfigMap::parse_yaml_subset(yaml, "test.yaml"));
  ASSERT_EQ(specs.size(), 1u);
  for (auto& s : specs) data::make_split(s);
  io::PreprocessConfig pre;
  pre.spacing = std::array<double, 3>{4, 4, 4};
  // As iris-train reads a case: image and labels, resampled to 4 mm.
  long loads = 0;
  data::CaseLoader loader = [&](const data::DatasetSpec&, const data::CaseSpec& c) {
    ++loads;
    Image image = io::read_image(c.image);
    Image labels = io::read_labels(c.labels);
    io::PreprocessedImage p = io::preprocess(image, pre);
    data::CaseVolume v;
    v.name = c.name;
    v.image = p.voxels;
    v.labels = io::preprocess_labels(labels, p).voxels.to(at::kLong);
    return v;
  };
  auto sets = data::load_datasets(specs, "train", loader);
  EXPECT_EQ(loads, 2);  // the case and, on its image's grid, the anatomy
  ASSERT_EQ(sets[0].held_out_by_anatomy.size(), 1u);
  const std::vector<long> held = sets[0].held_out_by_anatomy[0];
  std::string listed;
  for (long v : held) listed += " " + std::to_string(v);
  std::cout << "Brodmann areas held out by AAL 37-42:" << listed << std::endl;
  for (long area : {28, 34})  // mostly held-out anatomy
    EXPECT_NE(std::find(held.begin(), held.end(), area), held.end()) << area << " not held out:" << listed;
  for (long area : {4, 17, 20})  // motor, visual; 20 (inferior temporal) is 10 % hippocampus
    EXPECT_EQ(std::find(held.begin(), held.end(), area), held.end()) << area << " held out:" << listed;

  // Over many episodes, no task (nor union) holds a held-out area, and no
  // task has 15 % or more of its voxels on the anatomy.
  data::EpisodeOptions o;
  o.patch = 16;
  o.max_classes = 4;
  o.augment.enabled = false;
  data::EpisodeSampler s(sets, o, 5);
  const at::Tensor labels = s.case_at(0, 0)->labels.to(at::kLong);
  const at::Tensor anatomy = io::preprocess_labels(io::read_labels(T + "aal.nii.gz"),
                                                   io::preprocess(io::read_image(T + "ch2.nii.gz"), pre)).voxels.to(at::kLong);
  const at::Tensor on = (anatomy >= 37) & (anatomy <= 42);
  long tasks = 0;
  double worst = 0;
  for (long e = 0; e < 3000; ++e) {
    const auto batch = s.sample(e, 1);
    for (const auto& task : batch.task_labels[0]) {
      if (task.empty()) continue;
      ++tasks;
      at::Tensor in_task = at::zeros_like(labels, at::kBool);
      for (long v : task) {
        ASSERT_EQ(std::find(held.begin(), held.end(), v), held.end()) << "episode " << e << " area " << v;
        in_task.logical_or_(labels == v);
      }
      worst = std::max(worst, (in_task & on).sum().item<double>() / in_task.sum().item<double>());
    }
  }
  std::cout << tasks << " tasks; largest share of a task on AAL 37-42: " << worst << std::endl;
  EXPECT_GT(tasks, 3000);
  EXPECT_LT(worst, 0.15);

  // A map on another grid is refused, naming it.
  auto bad = specs;
  bad[0].regions.held_out_anatomy = T + "AICHAmc.nii.gz";
  try {
    data::load_datasets(bad, "train", loader);
    FAIL() << "a map on another grid was accepted";
  } catch (const iris::Error& e) {
    EXPECT_NE(std::string(e.what()).find("AICHAmc.nii.gz"), std::string::npos) << e.what();
  }
}

TEST(RegionEpisodes, AnatomyKeysAreChecked) {
  auto parse = [](const std::string& extra) {
    return data::datasets_from_config(ConfigMap::parse_yaml_subset(
        "datasets:\n  a:\n    layout: list\n    tasks: regions\n    cases: [\"i.nii.gz|l.nii.gz\"]\n" + extra, "t.yaml"));
  };
  auto message = [&](const std::string& extra) {
    try {
      parse(extra);
    } catch (const iris::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("    held_out_anatomy: aal.nii.gz\n").find("held_out_anatomy_values"), std::string::npos);
  EXPECT_NE(message("    held_out_anatomy: aal.nii.gz\n    held_out_anatomy_values: [1]\n    held_out_anatomy_fraction: 0\n")
                .find("held_out_anatomy_fraction"), std::string::npos);
  EXPECT_NE(message("    held_out_anatomy_values: [1]\n").find("applies with held_out_anatomy only"), std::string::npos);
  EXPECT_EQ(parse("    held_out_anatomy: aal.nii.gz\n    held_out_anatomy_values: [37, 38]\n")[0].regions.held_out_anatomy_fraction,
            0.15);
}
