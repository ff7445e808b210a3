// Inference strategies on the tiny model: ensembles, stored embeddings,
// retrieval, in-context tuning, sliding windows and post-processing.
#include <gtest/gtest.h>

#include <cmath>

#include <torch/torch.h>

#include "support/inference_helpers.h"
#include "support/test_support.h"
#include "iris/common/error.h"
#include "iris/infer/connected_components.h"
#include "iris/infer/reference.h"
#include "iris/infer/retrieval.h"
#include "iris/infer/sliding_window.h"
#include "iris/infer/tuning.h"
#include "iris/model/task_embedding.h"

using iris::testing::error_of;

using namespace iris;
using namespace iris_test;

namespace {

infer::SlidingWindowOptions window_options(long window, double overlap = 0.5) {
  infer::SlidingWindowOptions o;
  o.window = window;
  o.overlap = overlap;
  return o;
}


struct Tiny : ::testing::Test {
  void SetUp() override {
    net = tiny_net();
    std::tie(reference, reference_labels) = ball_and_box(24, 40, 36, 1);
    std::tie(query, query_labels) = ball_and_box(30, 44, 40, 2);
    task = infer::encode_reference(*net, reference, reference_labels, {1, 2}, "zscore", c10::kCPU, "fp");
  }
  model::IrisNet net{nullptr};
  io::Image reference, reference_labels, query, query_labels;
  model::TaskEmbedding task;
};

}  // namespace

TEST_F(Tiny, EnsembleIsTheElementwiseMeanOfItsMembers) {
  // Two different references: the ensemble's tokens are (a + b) / 2, added
  // here stage by stage, and a one-member ensemble is that member.
  auto [other, other_labels] = ball_and_box(28, 36, 40, 5);
  const model::TaskEmbedding second =
      infer::encode_reference(*net, other, other_labels, {1, 2}, "zscore", c10::kCPU, "fp");
  const model::TaskEmbedding ensemble = model::TaskEmbedding::mean({task, second});
  ASSERT_EQ(ensemble.stages.size(), task.stages.size());
  for (size_t s = 0; s < task.stages.size(); ++s) {
    ASSERT_FALSE(torch::allclose(task.stages[s], second.stages[s])) << "the two references must differ";
    EXPECT_TRUE(torch::allclose(ensemble.stages[s], (task.stages[s] + second.stages[s]) / 2, 1e-6, 1e-7)) << s;
  }
  const model::TaskEmbedding one = model::TaskEmbedding::mean({task});
  for (size_t s = 0; s < task.stages.size(); ++s) EXPECT_TRUE(torch::equal(one.stages[s], task.stages[s]));
  // And the decoder sees the mean: probabilities differ from either member's.
  const at::Tensor volume = data_volume(query);
  const auto opts = window_options(32);
  const at::Tensor p_ens = infer::sliding_window_probabilities(*net, volume, ensemble, opts);
  EXPECT_FALSE(torch::allclose(p_ens, infer::sliding_window_probabilities(*net, volume, task, opts)));
  EXPECT_FALSE(torch::allclose(p_ens, infer::sliding_window_probabilities(*net, volume, second, opts)));
}

TEST_F(Tiny, ClassesPerPassDecodesEachGroupAsItsOwnTask) {
  const model::TaskEmbedding first = task.select({0}), second = task.select({1});
  const model::TaskEmbedding both = model::TaskEmbedding::concat({first, second});
  EXPECT_EQ(both.labels, task.labels);
  for (size_t s = 0; s < task.stages.size(); ++s) EXPECT_TRUE(torch::equal(both.stages[s], task.stages[s]));

  const at::Tensor volume = data_volume(query);
  auto opts = window_options(32);
  const at::Tensor joint = infer::sliding_window_probabilities(*net, volume, task, opts);
  opts.classes_per_pass = 1;
  const at::Tensor apart = infer::sliding_window_probabilities(*net, volume, task, opts);
  opts.classes_per_pass = 0;
  EXPECT_TRUE(torch::allclose(apart[0], infer::sliding_window_probabilities(*net, volume, first, opts)[0], 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(apart[1], infer::sliding_window_probabilities(*net, volume, second, opts)[0], 1e-5, 1e-6));
  // Together, each class's tokens attend to the other's: a different result.
  EXPECT_FALSE(torch::allclose(joint, apart, 1e-4, 1e-5));
}

TEST_F(Tiny, StoredEmbeddingGivesIdenticalMasks) {
  const std::string path = temp_path("stored.task");
  task.save(path);
  const model::TaskEmbedding loaded = model::TaskEmbedding::load(path);
  EXPECT_EQ(loaded.labels, task.labels);
  const at::Tensor volume = data_volume(query);
  const auto opts = window_options(32);
  const at::Tensor fresh = infer::sliding_window_probabilities(*net, volume, task, opts);
  const at::Tensor stored = infer::sliding_window_probabilities(*net, volume, loaded, opts);
  EXPECT_TRUE(torch::equal(fresh, stored));
  EXPECT_TRUE(torch::equal(infer::labels_from_probabilities(fresh, task.labels, 0.5),
                           infer::labels_from_probabilities(stored, loaded.labels, 0.5)));
}

TEST_F(Tiny, SlidingWindowHandlesSmallerEqualAndLargerOddVolumes) {
  for (const std::vector<long>& size : {std::vector<long>{7, 13, 21}, {32, 32, 32}, {33, 47, 71}, {65, 20, 37}}) {
    const at::Tensor volume = torch::randn({size[0], size[1], size[2]});
    long calls = 0, last_total = 0;
    auto opts = window_options(32);
    opts.batch = 3;
    opts.progress = [&](long done, long total) {
      ++calls;
      last_total = total;
      EXPECT_LE(done, total);
    };
    const at::Tensor p = infer::sliding_window_probabilities(*net, volume, task, opts);
    EXPECT_EQ(p.sizes(), (at::IntArrayRef{2, size[0], size[1], size[2]}));
    EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
    EXPECT_GE(p.min().item<float>(), 0.0f);
    EXPECT_LE(p.max().item<float>(), 1.0f);
    EXPECT_EQ(calls, (last_total + 2) / 3);
  }
}

TEST_F(Tiny, QueryLargerThanTheModelPatchIsWindowed) {
  // 80 > the tiny model's 64-voxel patch: windows, not a shape error.
  const at::Tensor volume = torch::randn({80, 70, 66});
  const at::Tensor p = infer::sliding_window_probabilities(*net, volume, task, window_options(64, 0.25));
  EXPECT_EQ(p.sizes(), (at::IntArrayRef{2, 80, 70, 66}));
}

// A network whose last decoder block has zero conv weights (the convs have no
// bias) outputs zero features, so every window predicts logit 0, p = 0.5,
// everywhere. Any seam in the blending (unnormalised weights, uncovered or
// doubly counted voxels, padding leaking in) would show as a deviation.
TEST(SlidingWindow, ConstantModelGivesAConstantMapWithoutSeams) {
  model::IrisNet net = tiny_net();
  long zeroed = 0;
  {
    torch::NoGradGuard g;
    for (auto& p : net->named_parameters()) {
      const std::string& key = p.key();
      if (key.rfind("decoder.up4.conv.0.conv2.", 0) == 0 || key.rfind("decoder.up4.conv.0.shortcut.", 0) == 0) {
        p.value().zero_();
        ++zeroed;
      }
    }
  }
  ASSERT_EQ(zeroed, 2);
  auto [ref, labels] = ball_and_box(24, 24, 24, 3);
  const auto task = infer::encode_reference(*net, ref, labels, {1, 2}, "none", c10::kCPU, "");
  const at::Tensor volume = torch::randn({45, 77, 50});
  for (bool gaussian : {true, false}) {
    auto opts = window_options(32);
    opts.gaussian = gaussian;
    const at::Tensor p = infer::sliding_window_probabilities(*net, volume, task, opts);
    EXPECT_EQ(p.sizes(), (at::IntArrayRef{2, 45, 77, 50}));
    EXPECT_NEAR(p.min().item<double>(), 0.5, 1e-6);
    EXPECT_NEAR(p.max().item<double>(), 0.5, 1e-6);
  }
}

TEST(Retrieval, PicksTheNearestEmbeddingPerClass) {
  torch::manual_seed(3);
  auto embedding = [](const std::vector<at::Tensor>& stages, std::vector<long> labels) {
    model::TaskEmbedding t;
    t.stages = stages;
    t.labels = std::move(labels);
    t.model_fingerprint = "fp";
    return t;
  };
  auto random_stages = [](long K) {
    return std::vector<at::Tensor>{torch::randn({K, 5, 8}), torch::randn({K, 5, 4})};
  };
  const model::TaskEmbedding query = embedding(random_stages(3), {1, 2, 3});
  auto near = [&](long k) {  // class k of the query, slightly disturbed
    std::vector<at::Tensor> s;
    for (const auto& st : query.stages) s.push_back(st.narrow(0, k, 1) + 0.05 * torch::randn_like(st.narrow(0, k, 1)));
    return s;
  };
  infer::EmbeddingPool pool;
  // Entry 0 holds label 2 near the query, entry 1 label 1 near; entry 2 is far
  // for both; label 3 is in no entry; entry 3 has label 1 but far away.
  pool.entries.push_back({"a", embedding(near(1), {2}), {}});
  pool.entries.push_back({"b", embedding(near(0), {1}), {}});
  pool.entries.push_back({"c", embedding(random_stages(2), {1, 2}), {}});
  pool.entries.push_back({"d", embedding(random_stages(1), {1}), {}});
  const model::TaskEmbedding fallback = embedding(random_stages(3), {1, 2, 3});

  auto result = infer::pick_nearest_embeddings(query, {true, true, true}, fallback, pool);
  EXPECT_EQ(result.chosen_entry, (std::vector<long>{1, 0, -1}));
  EXPECT_GT(result.similarity[0], 0.95);
  for (size_t s = 0; s < query.stages.size(); ++s) {
    EXPECT_TRUE(torch::equal(result.task.stages[s][0], pool.entries[1].task.stages[s][0]));
    EXPECT_TRUE(torch::equal(result.task.stages[s][1], pool.entries[0].task.stages[s][0]));
    EXPECT_TRUE(torch::equal(result.task.stages[s][2], fallback.stages[s][2]));  // no entry has label 3
  }
  EXPECT_EQ(result.task.labels, fallback.labels);

  // A class without a query embedding keeps the fallback's.
  result = infer::pick_nearest_embeddings(query, {false, true, true}, fallback, pool);
  EXPECT_EQ(result.chosen_entry, (std::vector<long>{-1, 0, -1}));
  EXPECT_TRUE(torch::equal(result.task.stages[0][0], fallback.stages[0][0]));

  // The foreground-token variant compares only the last token of each stage.
  EXPECT_NEAR(infer::class_similarity(query, 0, query, 0, infer::EmbeddingSimilarity::foreground_token), 1.0, 1e-9);

  // Pools survive a round trip through a folder.
  const std::string folder = temp_path("pool");
  pool.entries[0].image_features = torch::tensor({1.0f, 0.0f, 0.0f});
  pool.save(folder);
  const auto loaded = infer::EmbeddingPool::load(folder, "fp");
  ASSERT_EQ(loaded.entries.size(), 4u);
  EXPECT_EQ(loaded.entries[0].name, "a");
  EXPECT_TRUE(loaded.entries[0].image_features.defined());
  EXPECT_FALSE(loaded.entries[1].image_features.defined());
  EXPECT_EQ(infer::pick_nearest_embeddings(query, {true, true, true}, fallback, loaded).chosen_entry,
            (std::vector<long>{1, 0, -1}));
  EXPECT_NE(error_of([&] { infer::EmbeddingPool::load(folder, "another"); }).find("another model"), std::string::npos);
}

TEST(Retrieval, ImageLevelPicksTheMostSimilarFeatures) {
  infer::EmbeddingPool pool;
  pool.entries.push_back({"x", {}, torch::tensor({1.0f, 0.0f, 0.0f})});
  pool.entries.push_back({"no-features", {}, {}});
  pool.entries.push_back({"y", {}, torch::tensor({0.0f, 2.0f, 0.1f})});
  double similarity = 0;
  EXPECT_EQ(infer::nearest_image(torch::tensor({0.1f, 1.0f, 0.0f}), pool, &similarity), 2);
  EXPECT_GT(similarity, 0.98);
  EXPECT_EQ(infer::nearest_image(torch::tensor({5.0f, -1.0f, 0.0f}), pool), 0);
  infer::EmbeddingPool bare;
  bare.entries.push_back({"no-features", {}, {}});
  EXPECT_NE(error_of([&] { infer::nearest_image(torch::ones({3}), bare); }).find("no pool entry"), std::string::npos);
}

// End to end on real anatomy: the pool holds the query's own embedding (from
// the same initial masks object retrieval computes) next to the initial
// reference; retrieval must find the query's own one.
TEST_F(Tiny, ObjectRetrievalFindsTheQuerysOwnEmbeddingOnABrain) {
  auto [brain, atlas] = small_brain(2);
  const auto values = infer::reference_label_values(atlas);
  ASSERT_EQ(values.size(), 2u);
  const model::TaskEmbedding initial = infer::encode_reference(*net, brain, atlas, values, "mr", c10::kCPU, "fp");
  const at::Tensor volume = data_volume(brain, "mr").flip({2});  // the query: the mirrored brain
  infer::RetrievalOptions options;
  options.window = window_options(64);
  const at::Tensor probs = infer::sliding_window_probabilities(*net, volume, initial, options.window);
  // Threshold so that each class has an initial mask (an untrained net is unsure).
  options.threshold = probs.amax({1, 2, 3}).min().item<double>() - 1e-6;
  const at::Tensor masks = probs.ge(options.threshold).to(at::kFloat);
  infer::EmbeddingPool pool;
  pool.entries.push_back({"initial", initial, {}});
  model::TaskEmbedding own = infer::encode_masks(*net, volume, masks, c10::kCPU, "fp");
  own.labels = values;
  pool.entries.push_back({"own", own, {}});

  const infer::RetrievalResult result = infer::object_level_retrieval(*net, volume, initial, pool, options);
  EXPECT_EQ(result.chosen_entry, (std::vector<long>{1, 1}));
  for (double s : result.similarity) EXPECT_NEAR(s, 1.0, 1e-5);
  for (size_t s = 0; s < own.stages.size(); ++s) EXPECT_TRUE(torch::allclose(result.task.stages[s], own.stages[s]));

  // With an impossible threshold no class has an initial mask: all fall back.
  options.threshold = 2.0;
  const auto fallback = infer::object_level_retrieval(*net, volume, initial, pool, options);
  EXPECT_EQ(fallback.chosen_entry, (std::vector<long>{-1, -1}));
  for (size_t s = 0; s < initial.stages.size(); ++s) EXPECT_TRUE(torch::equal(fallback.task.stages[s], initial.stages[s]));
}

TEST_F(Tiny, TuningLowersTheLossAndLeavesTheNetworkAlone) {
  auto [brain, atlas] = small_brain(2);
  const auto values = infer::reference_label_values(atlas);
  const model::TaskEmbedding initial = infer::encode_reference(*net, brain, atlas, values, "mr", c10::kCPU, "fp");
  std::vector<at::Tensor> masks;
  for (long v : values) masks.push_back(atlas.voxels.eq(v).to(at::kFloat));
  const std::vector<infer::TuningExample> examples{{data_volume(brain, "mr"), at::stack(masks)}};

  std::vector<at::Tensor> before;
  for (const auto& p : net->parameters()) before.push_back(p.detach().clone());
  infer::TuningOptions options;
  options.steps = 6;
  options.learning_rate = 5e-2;
  long progress_calls = 0;
  options.progress = [&](long, long, double) { ++progress_calls; };
  const infer::TuningResult tuned = infer::tune_task_embedding(*net, initial, examples, options);

  ASSERT_EQ(tuned.losses.size(), 7u);
  EXPECT_EQ(progress_calls, 6);
  EXPECT_NEAR(tuned.losses.front(), infer::tuning_loss(*net, initial, examples, options), 1e-5);
  EXPECT_NEAR(tuned.losses.back(), infer::tuning_loss(*net, tuned.task, examples, options), 1e-5);
  EXPECT_LT(tuned.losses.back(), tuned.losses.front());
  EXPECT_EQ(tuned.task.labels, initial.labels);
  EXPECT_EQ(tuned.task.model_fingerprint, "fp");
  EXPECT_FALSE(torch::equal(tuned.task.stages[0], initial.stages[0]));
  // Frozen: weights unchanged and trainable again afterwards.
  const auto after = net->parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(torch::equal(after[i], before[i]));
    EXPECT_TRUE(after[i].requires_grad());
  }
  // Storable like an encoded task.
  const std::string path = temp_path("tuned.task");
  tuned.task.save(path);
  const auto loaded = model::TaskEmbedding::load(path);
  for (size_t s = 0; s < loaded.stages.size(); ++s) EXPECT_TRUE(torch::equal(loaded.stages[s], tuned.task.stages[s]));

}

TEST_F(Tiny, TuningInGroupsTunesEachGroupOnItsOwn) {
  auto [brain, atlas] = small_brain(2);
  const auto values = infer::reference_label_values(atlas);
  ASSERT_EQ(values.size(), 2u);
  const model::TaskEmbedding initial = infer::encode_reference(*net, brain, atlas, values, "mr", c10::kCPU, "fp", 1);
  std::vector<at::Tensor> masks;
  for (long v : values) masks.push_back(atlas.voxels.eq(v).to(at::kFloat));
  const at::Tensor volume = data_volume(brain, "mr");
  const std::vector<infer::TuningExample> examples{{volume, at::stack(masks)}};

  infer::TuningOptions options;
  options.steps = 2;
  options.learning_rate = 5e-2;
  std::vector<std::pair<long, long>> progress;
  options.progress = [&](long step, long total, double) { progress.emplace_back(step, total); };
  options.classes_per_pass = 1;
  const infer::TuningResult grouped = infer::tune_task_embedding(*net, initial, examples, options);
  ASSERT_EQ(progress.size(), 4u);
  EXPECT_EQ(progress.front(), std::make_pair(1L, 4L));
  EXPECT_EQ(progress.back(), std::make_pair(4L, 4L));
  EXPECT_EQ(grouped.task.labels, initial.labels);
  EXPECT_NEAR(grouped.losses.back(), infer::tuning_loss(*net, grouped.task, examples, options), 1e-5);

  // Each group alone, from its own masks: the grouped result, class by class.
  options.classes_per_pass = 0;
  options.progress = nullptr;
  std::vector<model::TaskEmbedding> alone;
  std::vector<double> mean_losses(options.steps + 1, 0.0);
  for (long k = 0; k < 2; ++k) {
    const std::vector<infer::TuningExample> one{{volume, masks[k].unsqueeze(0)}};
    const infer::TuningResult r = infer::tune_task_embedding(*net, initial.select({k}), one, options);
    for (size_t i = 0; i < r.losses.size(); ++i) mean_losses[i] += r.losses[i] / 2.0;
    alone.push_back(r.task);
  }
  const model::TaskEmbedding both = model::TaskEmbedding::concat(alone);
  for (size_t s = 0; s < both.stages.size(); ++s)
    EXPECT_TRUE(torch::allclose(grouped.task.stages[s], both.stages[s], 1e-5, 1e-6)) << "stage " << s;
  for (size_t i = 0; i < mean_losses.size(); ++i) EXPECT_NEAR(grouped.losses[i], mean_losses[i], 1e-5);

  // Tuned together, each class's tokens see the other's: a different task.
  const infer::TuningResult joint = infer::tune_task_embedding(*net, initial, examples, options);
  EXPECT_FALSE(torch::allclose(joint.task.stages[0], grouped.task.stages[0], 1e-4, 1e-5));
}

TEST(BadInput, EmptyOrMissingReferenceLabels) {
  io::Image empty;
  empty.voxels = torch::zeros({8, 8, 8}, torch::kInt);
  empty.source = "empty_mask.nii.gz";
  EXPECT_NE(error_of([&] { infer::reference_label_values(empty); }).find("empty"), std::string::npos);
  auto [image, labels] = ball_and_box(16, 16, 16, 4);
  labels.source = "ref_mask.nii.gz";
  const std::string missing = error_of([&] { infer::reference_label_values(labels, {1, 5, 7}); });
  EXPECT_NE(missing.find("5, 7"), std::string::npos) << missing;
  EXPECT_NE(missing.find("present: 1, 2"), std::string::npos) << missing;
  model::IrisNet net = tiny_net();
  at::Tensor masks = torch::zeros({2, 16, 16, 16});
  masks[0][3][3][3] = 1;  // the second class stays empty
  const std::string no_voxels = error_of([&] { infer::encode_masks(*net, image.voxels, masks, c10::kCPU, ""); });
  EXPECT_NE(no_voxels.find("reference mask: class #2 has no voxels"), std::string::npos) << no_voxels;
}

TEST(ConnectedComponents, FaceAndFullConnectivity) {
  at::Tensor m = torch::zeros({5, 6, 7}, torch::kByte);
  m.index_put_({torch::indexing::Slice(0, 2), torch::indexing::Slice(0, 2), torch::indexing::Slice(0, 2)}, 1);  // 8 voxels
  m[2][2][2] = 1;                 // touches the cube only by a corner
  m[4][5][6] = 1;                 // alone
  m.index_put_({3, torch::indexing::Slice(0, 6), 4}, 1);  // a 6-voxel line
  auto faces = infer::connected_components(m, infer::Connectivity::faces);
  EXPECT_EQ(faces.sizes, (std::vector<long>{8, 1, 6, 1}));
  EXPECT_EQ(faces.labels.max().item<int>(), 4);
  EXPECT_EQ(faces.labels[2][2][2].item<int>(), 2);
  auto all = infer::connected_components(m, infer::Connectivity::all);
  EXPECT_EQ(all.sizes, (std::vector<long>{9, 6, 1}));
  EXPECT_EQ(infer::connected_components(torch::zeros({3, 3, 3})).sizes.size(), 0u);

  // Per class clean-up on a label map: class 1 = the components above, class 2
  // = two blobs of 3 and 1 voxels; label 9 is not touched.
  at::Tensor labels = m.to(torch::kInt);
  labels[0][5][0] = 2;
  labels[0][5][1] = 2;
  labels[0][5][2] = 2;
  labels[4][0][0] = 2;
  labels[4][0][6] = 9;
  infer::PostprocessOptions keep;
  keep.keep_largest = true;
  at::Tensor kept = infer::postprocess_labels(labels, {1, 2}, keep);
  EXPECT_EQ(kept.eq(1).sum().item<long>(), 8);
  EXPECT_EQ(kept.eq(2).sum().item<long>(), 3);
  EXPECT_EQ(kept.eq(9).sum().item<long>(), 1);
  EXPECT_EQ(kept.dtype(), labels.dtype());
  infer::PostprocessOptions small;
  small.min_component_voxels = 2;
  at::Tensor cleaned = infer::postprocess_labels(labels, {1, 2}, small);
  EXPECT_EQ(cleaned.eq(1).sum().item<long>(), 14);
  EXPECT_EQ(cleaned.eq(2).sum().item<long>(), 3);
  EXPECT_EQ(cleaned[2][2][2].item<int>(), 0);
  EXPECT_TRUE(torch::equal(infer::postprocess_labels(labels, {1, 2}, {}), labels));
}
