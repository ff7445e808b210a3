// Activation checkpointing: same outputs and gradients as plain autograd,
// dropout replayed, parameter hooks fired once with the whole gradient.
#include <gtest/gtest.h>

#include <map>

#include <torch/torch.h>

#include "iris/common/compat.h"
#include "iris/common/error.h"
#include "iris/model/checkpointing.h"
#include "iris/model/iris_net.h"

using namespace iris::model;

namespace {

// Largest difference relative to the largest magnitude of `expected`.
double relative_difference(const at::Tensor& actual, const at::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return (actual - expected).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

struct Episode {
  at::Tensor query, reference, masks;
};

Episode tiny_episode() {
  torch::manual_seed(3);
  Episode e;
  e.query = torch::randn({1, 1, 32, 32, 32});
  e.reference = torch::randn({1, 1, 32, 32, 32});
  e.masks = (torch::rand({1, 2, 32, 32, 32}) > 0.6).to(torch::kFloat);
  return e;
}

// One training step's gradients, the way the trainer calls the network
// (the encoder runs twice: query and reference).
std::map<std::string, at::Tensor> step_gradients(IrisNet& net, const Episode& e, at::Tensor* logits_out = nullptr,
                                                 bool bf16_autocast = false) {
  net->zero_grad();
  at::Tensor logits;
  {
    // As the trainer does with train.bf16: only the forward under autocast.
    iris::compat::AutocastGuard autocast(c10::DeviceType::CPU, at::kBFloat16, bf16_autocast);
    auto tokens = net->encode_task_tokens(net->encode_image(e.reference), e.masks);
    logits = net->decode(net->encode_image(e.query), tokens);
  }
  logits = logits.to(at::kFloat);
  torch::binary_cross_entropy_with_logits(logits, e.masks).backward();
  if (logits_out) *logits_out = logits.detach().clone();
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : net->named_parameters())
    if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
  return grads;
}

void expect_same_gradients(const std::map<std::string, at::Tensor>& actual,
                           const std::map<std::string, at::Tensor>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, g] : expected) {
    ASSERT_TRUE(actual.count(name)) << name;
    // Bitwise equal on CPU with LibTorch 1.13; the tolerance leaves room for
    // another summation order of the query and reference contributions in
    // other engines (float addition is not associative).
    EXPECT_LE(relative_difference(actual.at(name), g), 1e-6) << name;
  }
}

}  // namespace

TEST(Checkpointing, FunctionGradientMatchesAndFnRunsTwice) {
  int calls = 0;
  auto fn = [&](const at::Tensor& x) {
    ++calls;
    return (x.sin() * x).pow(2).sum(1, true) * x;
  };
  auto x = torch::randn({4, 5}, torch::requires_grad());
  auto plain = fn(x);
  auto expected = torch::autograd::grad({plain.sum()}, {x})[0];
  calls = 0;
  auto out = checkpointed(fn, x);
  EXPECT_TRUE(at::equal(out, plain));
  EXPECT_EQ(calls, 1);
  out.sum().backward();
  EXPECT_EQ(calls, 2);  // forward, then the recomputation
  EXPECT_LE(relative_difference(x.grad(), expected), 1e-6);
}

TEST(Checkpointing, WithoutGradItIsOnePlainCall) {
  int calls = 0;
  auto fn = [&](const at::Tensor& x) {
    ++calls;
    return x * 2;
  };
  {
    torch::NoGradGuard no_grad;
    auto out = checkpointed(fn, torch::ones({3}, torch::requires_grad()));
    EXPECT_FALSE(out.requires_grad());
  }
  EXPECT_EQ(calls, 1);
  auto out = checkpointed(fn, torch::ones({3}));  // nothing requires grad
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(out.requires_grad());
}

TEST(Checkpointing, DropoutMaskIsReplayedAndTheRngStreamIsNotShifted) {
  auto fn = [](const at::Tensor& x) { return at::dropout(x * 3, 0.5, /*train=*/true).exp(); };
  auto run = [&](bool checkpoint, at::Tensor* next_draw) {
    auto x = torch::linspace(-1, 1, 4096).requires_grad_();
    torch::manual_seed(11);
    auto out = checkpoint ? checkpointed(fn, x) : fn(x);
    out.sum().backward();
    *next_draw = torch::rand({4});
    return std::make_pair(out.detach(), x.grad());
  };
  at::Tensor next_plain, next_ckpt;
  auto plain = run(false, &next_plain);
  auto ckpt = run(true, &next_ckpt);
  EXPECT_TRUE(at::equal(ckpt.first, plain.first));
  EXPECT_TRUE(at::equal(ckpt.second, plain.second));
  // Some units were dropped, so equal gradients mean the same mask.
  EXPECT_GT(plain.second.eq(0).sum().item<long>(), 1000);
  EXPECT_TRUE(at::equal(next_ckpt, next_plain));
}

TEST(Checkpointing, RefusesATensorThatWouldGetNoGradient) {
  auto w = torch::randn({3}, torch::requires_grad());
  auto x = torch::randn({3}, torch::requires_grad());
  auto out = checkpointed([&](const at::Tensor& v) { return v * w; }, x);
  EXPECT_THROW(out.sum().backward(), std::exception);
}

struct TinyCheckpointNet : ::testing::Test {
  void SetUp() override {
    torch::manual_seed(1);
    net = IrisNet(preset("tiny"));
    net->train();
    episode = tiny_episode();
  }
  IrisNet net{nullptr};
  Episode episode;
};

TEST_F(TinyCheckpointNet, SameLogitsAndGradients) {
  at::Tensor logits_plain, logits_ckpt;
  auto plain = step_gradients(net, episode, &logits_plain);
  net->set_activation_checkpointing(true);
  EXPECT_TRUE(net->activation_checkpointing());
  auto ckpt = step_gradients(net, episode, &logits_ckpt);
  EXPECT_TRUE(at::equal(logits_ckpt, logits_plain));
  EXPECT_EQ(plain.size(), net->named_parameters().size());  // every parameter got one
  expect_same_gradients(ckpt, plain);
  // Off again: the plain path.
  net->set_activation_checkpointing(false);
  expect_same_gradients(step_gradients(net, episode), plain);
}

TEST(Checkpointing, RecomputationRunsUnderTheForwardsAutocast) {
  std::vector<at::ScalarType> seen;
  auto w = torch::randn({3, 2, 3, 3, 3});
  auto fn = [&](const at::Tensor& x) {
    at::Tensor y = at::conv3d(x, w);
    seen.push_back(y.scalar_type());
    return y;
  };
  auto x = torch::randn({1, 2, 6, 6, 6}, torch::requires_grad());
  at::Tensor out;
  {
    iris::compat::AutocastGuard autocast(c10::DeviceType::CPU, at::kBFloat16, true);
    out = checkpointed(fn, x);
  }
  out.to(at::kFloat).sum().backward();  // outside autocast, as in training
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], at::kBFloat16);
  EXPECT_EQ(seen[1], at::kBFloat16);  // replayed, not float32
  EXPECT_EQ(x.grad().scalar_type(), at::kFloat);
}

TEST_F(TinyCheckpointNet, Bf16AutocastGivesTheSameLogitsAndGradientsToBf16Rounding) {
  at::Tensor logits_plain, logits_ckpt;
  auto plain = step_gradients(net, episode, &logits_plain, /*bf16_autocast=*/true);
  net->set_activation_checkpointing(true);
  auto ckpt = step_gradients(net, episode, &logits_ckpt, /*bf16_autocast=*/true);
  EXPECT_TRUE(at::equal(logits_ckpt, logits_plain));
  // Not bitwise: plain autocast sums a weight's query and reference
  // gradients in bf16 (one cached bf16 copy of the weight), the
  // recomputation sums them in float32. bf16 has 8 bits of mantissa.
  ASSERT_EQ(ckpt.size(), plain.size());
  for (const auto& [name, g] : plain) EXPECT_LE(relative_difference(ckpt.at(name), g), 1e-2) << name;
}

TEST_F(TinyCheckpointNet, SameGradientsInChannelsLastLayout) {
  net->set_channels_last(true);  // what the trainer uses
  auto plain = step_gradients(net, episode);
  net->set_activation_checkpointing(true);
  expect_same_gradients(step_gradients(net, episode), plain);
}

TEST_F(TinyCheckpointNet, ParameterHooksFireOncePerBackwardWithTheWholeGradient) {
  // Like the trainer's GradientSynchronizer: a hook on every parameter that
  // copies the gradient it is handed. With a nested backward per segment, the
  // encoder's parameters (used by the query and the reference pass) would be
  // handed two partial gradients.
  std::vector<at::Tensor> params = net->parameters();
  std::vector<std::vector<at::Tensor>> seen(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    params[i].register_hook([&seen, i](const at::Tensor& g) { seen[i].push_back(g.clone()); });

  step_gradients(net, episode);
  std::vector<at::Tensor> plain;
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(seen[i].size(), 1u) << i;
    plain.push_back(seen[i][0]);
    seen[i].clear();
  }
  net->set_activation_checkpointing(true);
  step_gradients(net, episode);
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(seen[i].size(), 1u) << i;
    EXPECT_LE(relative_difference(seen[i][0], plain[i]), 1e-6) << i;
  }
}

TEST_F(TinyCheckpointNet, NotPartOfTheModelState) {
  auto keys = [&] {
    std::vector<std::string> k = net->named_parameters().keys();
    for (const auto& b : net->named_buffers().keys()) k.push_back(b);
    return k;
  };
  const auto before = keys();
  torch::manual_seed(5);
  const auto expected_draw = torch::rand({3});
  torch::manual_seed(5);
  net->set_activation_checkpointing(true);
  EXPECT_TRUE(at::equal(torch::rand({3}), expected_draw));  // building the twins drew nothing
  EXPECT_EQ(keys(), before);
}

TEST_F(TinyCheckpointNet, InferenceIsUnaffected) {
  torch::NoGradGuard no_grad;
  net->eval();
  auto plain = net->forward(episode.query, episode.reference, episode.masks);
  net->set_activation_checkpointing(true);
  EXPECT_TRUE(at::equal(net->forward(episode.query, episode.reference, episode.masks), plain));
}
