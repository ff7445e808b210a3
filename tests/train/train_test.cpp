// Training engine: optimiser maths, schedules, dataset layouts, episode
// sampling, exact resume, and two Gloo ranks against one process.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <spawn.h>
#include <sys/wait.h>

#include <torch/torch.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/data/dataset.h"
#include "iris/data/episodes.h"
#include "iris/model/model_file.h"
#include "iris/train/communicator.h"
#include "iris/train/losses.h"
#include "iris/train/optimizer.h"
#include "iris/train/schedule.h"
#include "iris/train/tensorboard.h"
#include "iris/train/trainer.h"

extern char** environ;
using namespace iris;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("iris_train_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

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
  auto terms = train::dice_bce_loss(logits, t, valid);
  EXPECT_LT(terms.dice.item<float>(), 1e-4);
  EXPECT_LT(terms.bce.item<float>(), 1e-4);
  // All-zero logits: p = 0.5 everywhere; Dice = 2*0.5*32 / (32 + 32) = 0.5, BCE = ln 2.
  auto half = train::dice_bce_loss(torch::zeros_like(t), t, valid);
  EXPECT_NEAR(half.dice.item<float>(), 0.5, 1e-4);
  EXPECT_NEAR(half.bce.item<float>(), std::log(2.0), 1e-4);
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
    EXPECT_LT((c - 15.5).abs().max().item<float>(), 15.5 * spread + 2.0);  // the voxel drawn is within 1.5 (+ resampling) of the centroid
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

// Every parameter and buffer of a trained network, flattened into one tensor.
at::Tensor flat_state(train::Trainer& t) {
  std::vector<at::Tensor> state;
  for (auto& p : t.net()->parameters()) state.push_back(p.detach().reshape({-1}));
  for (auto& b : t.net()->buffers()) state.push_back(b.reshape({-1}));
  return torch::cat(state);
}
}  // namespace

// The parent test starts this binary twice as workers (fresh processes, so
// no fork-after-threads trouble); each trains and writes its final weights.
TEST(Distributed, Worker) {
  const char* out = std::getenv("IRIS_TEST_WORKER_OUT");
  if (!out) GTEST_SKIP() << "only runs as a worker of Distributed.TwoGlooRanksMatchOneProcess";
  auto env = train::DistributedEnv::from_environment();
  auto comm = train::make_communicator(env, train::CommunicatorOptions{"gloo"});
  auto c = distributed_config(fs::path(out) / ("rank" + std::to_string(env.rank)));
  train::Trainer t(c, tiny_model(), ConfigMap{}, data::EpisodeSampler(synthetic_datasets(), c.episodes, c.seed), std::nullopt,
                   {"outer", "core"}, *comm);
  t.run(false);
  torch::save(flat_state(t), (fs::path(out) / ("weights" + std::to_string(env.rank) + ".pt")).string());
}

TEST(Distributed, TwoGlooRanksMatchOneProcess) {
  fs::path dir = temp_dir("gloo");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const int port = 29000 + (::getpid() % 2000);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<std::string> envs{"RANK=" + std::to_string(rank), "WORLD_SIZE=2", "LOCAL_RANK=" + std::to_string(rank),
                                  "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port),
                                  "IRIS_TEST_WORKER_OUT=" + dir.string(), "OMP_NUM_THREADS=1"};
    for (char** e = environ; *e; ++e) {
      std::string s(*e);
      if (s.rfind("RANK=", 0) && s.rfind("WORLD_SIZE=", 0) && s.rfind("MASTER_", 0) && s.rfind("OMP_NUM_THREADS=", 0))
        envs.push_back(s);
    }
    std::vector<char*> envp;
    for (auto& s : envs) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string filter = "--gtest_filter=Distributed.Worker";
    char* argv[] = {const_cast<char*>(self.c_str()), filter.data(), nullptr};
    pid_t pid;
    ASSERT_EQ(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp.data()), 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker failed";
  }
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
