#pragma once
// One whole training step of iris against the author's code (Stanford-AIMI/MASS):
// the fixture tests/fixtures/mass_train_step (tools/make_mass_train_step.py,
// docs/fixtures.md), the digests it is compared through, and iris's step on
// that batch. Used by tests/train/mass_train_step_test.cpp (CPU) and
// tests/device/device_test.cpp (the same bf16 step on a GPU).
//
// Tensors are compared through a digest (the tensor itself up to 64 elements,
// otherwise 32 random +-1 projections over sqrt(32)): the relative distance of
// two digests estimates the relative distance of the tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "iris/common/config_map.h"
#include "iris/common/json.h"
#include "iris/model/checkpoint_import.h"
#include "iris/model/losses.h"
#include "iris/train/optimizer.h"
#include "iris/train/train_config.h"
#include "iris/train/training_step.h"
#include "support/float_file.h"

namespace iris_test {

using namespace iris;

const std::string kDir = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/mass_train_step/";
const std::string kModel = std::string(IRIS_TEST_DATA_DIR) + "/fixtures/mass_tiny/model.pt";
const std::string kPaperConfig = std::string(IRIS_SOURCE_DIR) + "/configs/train/paper.yaml";
constexpr long kFullLimit = 64, kSketchRows = 32;

inline at::Tensor load_bin(const std::string& name, std::vector<int64_t> shape) {
  return read_float32_file(kDir + name, std::move(shape));
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

using Digest = std::vector<double>;

inline Digest digest(const at::Tensor& t) {
  const at::Tensor flat = t.detach().to(at::kDouble).cpu().contiguous().reshape(-1);
  const double* v = flat.data_ptr<double>();
  const uint64_t n = static_cast<uint64_t>(flat.numel());
  if (static_cast<long>(n) <= kFullLimit) return Digest(v, v + n);
  Digest d(kSketchRows, 0.0);
  for (uint64_t r = 0; r < static_cast<uint64_t>(kSketchRows); ++r) {
    double s = 0;
    for (uint64_t i = 0; i < n; ++i) s += (splitmix64((r << 32) | i) >> 63) ? -v[i] : v[i];
    d[r] = s / std::sqrt(static_cast<double>(kSketchRows));
  }
  return d;
}

inline double norm(const Digest& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

// |a - b| / |b|
inline double relative(const Digest& a, const Digest& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s) / std::max(norm(b), 1e-30);
}

struct StepDigests {
  double loss = 0, dice = 0, bce = 0, grad_norm = 0;
  Digest logits;
  std::map<std::string, Digest> grad, delta, ema_delta;
};

// The author's digests, read in the order the generator wrote them.
struct Fixture {
  Json meta;
  std::vector<std::pair<std::string, long>> parameters;
  std::map<std::string, StepDigests> runs;  // "fp32", "bf16", "fp64"
};

inline const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture x;
    x.meta = read_json_file(kDir + "meta.json");
    for (const auto& p : x.meta.at("parameters")) x.parameters.emplace_back(p.at(0).get<std::string>(), p.at(1).get<long>());
    std::ifstream in(kDir + "digests.bin", std::ios::binary);
    if (!in) throw std::runtime_error("missing fixture digests.bin");
    auto next = [&](long numel) {
      const long length = numel <= kFullLimit ? numel : kSketchRows;
      std::vector<float> buffer(static_cast<size_t>(length));
      in.read(reinterpret_cast<char*>(buffer.data()), length * 4);
      if (in.gcount() != length * 4) throw std::runtime_error("short digests.bin");
      return Digest(buffer.begin(), buffer.end());
    };
    const long B = x.meta.at("batch"), K = x.meta.at("slots"), S = x.meta.at("size");
    for (const char* run : {"fp32", "bf16", "fp64"}) {
      StepDigests& d = x.runs[run];
      d.logits = next(B * K * S * S * S);
      for (const auto& [name, numel] : x.parameters) {
        d.grad[name] = next(numel);
        d.delta[name] = next(numel);
        d.ema_delta[name] = next(numel);
      }
      const Json& scalars = x.meta.at(run);
      d.loss = scalars.at("loss");
      d.dice = scalars.at("dice");
      d.bce = scalars.at("bce");
      d.grad_norm = scalars.at("grad_norm");
    }
    char extra;
    if (in.read(&extra, 1)) throw std::runtime_error("digests.bin is longer than meta.json says");
    return x;
  }();
  return f;
}

// The shipped paper recipe: the settings the author's step was run with.
inline train::TrainConfig paper_config() {
  return train::TrainConfig::from_config(ConfigMap::load_yaml_file(kPaperConfig).subtree("train"));
}

// One iris training step on the fixture's batch, as Trainer::step runs it.
enum class Precision { fp32, bf16, fp64 };

inline StepDigests iris_step(Precision precision, const train::TrainConfig& config,
                             const c10::Device& device = c10::Device(c10::kCPU)) {
  model::IrisModel model = model::import_mass_checkpoint(kModel, std::nullopt);
  auto& net = *model.net;
  const at::ScalarType type = precision == Precision::fp64 ? at::kDouble : at::kFloat;
  net.to(device, type);
  net.train();
  net.set_channels_last(true);  // as the Trainer does
  const long B = fixture().meta.at("batch"), K = fixture().meta.at("slots"), S = fixture().meta.at("size");
  const at::Tensor query = load_bin("query_image.bin", {B, 1, S, S, S}).to(device, type);
  const at::Tensor reference = load_bin("reference_image.bin", {B, 1, S, S, S}).to(device, type);
  const at::Tensor reference_masks = load_bin("reference_masks.bin", {B, K, S, S, S}).to(device, type);
  const at::Tensor query_masks = load_bin("query_masks.bin", {B, K, S, S, S}).to(device, type);
  at::Tensor valid_cpu = at::zeros({B, K});
  const Json& tgt_idx = fixture().meta.at("tgt_idx");
  for (long b = 0; b < B; ++b)
    for (long k = 0; k < K; ++k) valid_cpu[b][k] = tgt_idx.at(b).at(k).get<long>() >= 0 ? 1.0 : 0.0;
  const at::Tensor valid = valid_cpu.to(device);

  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : net.named_parameters()) named.emplace_back(p.key(), p.value());
  std::map<std::string, at::Tensor> w0;
  std::vector<at::Tensor> ema, params;
  for (auto& [name, p] : named) {
    w0[name] = p.detach().clone();
    ema.push_back(p.detach().clone());  // the EMA starts as a copy of the model
    params.push_back(p);
  }
  train::OptimizerOptions options;
  options.kind = config.optimizer;
  options.eps = config.optimizer_eps;
  train::Optimizer optimizer(train::make_param_groups(named, config.param_groups, config.weight_decay), options);
  optimizer.zero_grad();

  const train::EpisodeForward forward = train::episode_forward(net, query, reference, reference_masks, precision == Precision::bf16);
  const model::LossTerms terms = model::dice_bce_loss(forward.logits, query_masks, valid, train::loss_weights(config));
  terms.total.backward();

  StepDigests d;
  d.loss = terms.total.item<double>();
  d.dice = terms.dice.item<double>();
  d.bce = terms.bce.item<double>();
  d.logits = digest(forward.logits);
  for (auto& [name, p] : named) d.grad[name] = digest(p.grad());
  d.grad_norm = train::clip_grad_norm(optimizer.groups(), config.grad_clip);
  optimizer.step(config.lr);
  train::update_weight_ema(ema, params, config.weight_ema);
  for (size_t i = 0; i < named.size(); ++i) {
    const auto& [name, p] = named[i];
    d.delta[name] = digest(p.detach() - w0[name]);
    d.ema_delta[name] = digest(ema[i] - w0[name]);
  }
  return d;
}

inline double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// A parameter whose gradient is below this share of the total norm carries
// rounding noise only (the author's own gradient there is ~1e-9): its
// gradient, update and EMA are compared in absolute terms against the total.
constexpr double kSignificant = 1e-5;

struct Worst {
  double value = 0;
  std::string name;
  void take(double v, const std::string& n) {
    if (v > value) value = v, name = n;
  }
};

// Per stage, the worst relative distance over the significant parameters and
// the worst absolute one (relative to the total norm) over the others.
struct Distances {
  Worst grad, delta, ema_delta, grad_noise;
  std::vector<double> grad_all, delta_all;
};

inline Distances distances(const StepDigests& iris, const StepDigests& mass) {
  Distances out;
  for (const auto& [name, numel] : fixture().parameters) {
    const Digest& g = mass.grad.at(name);
    if (norm(g) < kSignificant * mass.grad_norm) {
      Digest diff = iris.grad.at(name);
      for (size_t i = 0; i < diff.size(); ++i) diff[i] -= g[i];
      out.grad_noise.take(norm(diff) / mass.grad_norm, name);
      continue;
    }
    out.grad.take(relative(iris.grad.at(name), g), name);
    out.delta.take(relative(iris.delta.at(name), mass.delta.at(name)), name);
    out.ema_delta.take(relative(iris.ema_delta.at(name), mass.ema_delta.at(name)), name);
    out.grad_all.push_back(relative(iris.grad.at(name), g));
    out.delta_all.push_back(relative(iris.delta.at(name), mass.delta.at(name)));
  }
  return out;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}



inline void print(const char* what, const StepDigests& iris, const StepDigests& mass, const Distances& d) {
  std::printf("%s: loss %.12g (MASS %.12g), region %.12g (%.12g), bce %.12g (%.12g), grad norm %.12g (%.12g), "
              "logits %.3g\n",
              what, iris.loss, mass.loss, iris.dice, mass.dice, iris.bce, mass.bce, iris.grad_norm, mass.grad_norm,
              relative(iris.logits, mass.logits));
  std::printf("%s: worst relative distance: gradient %.3g (%s), median %.3g; Lamb update %.3g (%s), median %.3g; "
              "EMA update %.3g (%s); negligible gradients %.3g of the total norm (%s)\n",
              what, d.grad.value, d.grad.name.c_str(), median(d.grad_all), d.delta.value, d.delta.name.c_str(),
              median(d.delta_all), d.ema_delta.value, d.ema_delta.name.c_str(), d.grad_noise.value,
              d.grad_noise.name.c_str());
}


// iris's bf16 step (on `where`) against the author's float32 step, within the
// author's own bf16 distance from it (times 2: another rounding order).
inline void expect_bf16_step_within_the_authors(const StepDigests& iris, const char* where) {
  const Fixture& f = fixture();
  const StepDigests& mass32 = f.runs.at("fp32");
  const Json& own = f.meta.at("bf16_vs_fp32");
  const Distances d = distances(iris, mass32);
  const double loss = rel(iris.loss, mass32.loss), grad_norm = rel(iris.grad_norm, mass32.grad_norm);
  const double logits = relative(iris.logits, mass32.logits);
  const double grad_median = median(d.grad_all), delta_median = median(d.delta_all);
  std::printf("iris bf16 on %s vs MASS fp32 (MASS bf16 vs MASS fp32): loss %.3g (%.3g), logits %.3g (%.3g), "
              "grad norm %.3g (%.3g), gradient median %.3g (%.3g) worst %.3g (%.3g), Lamb update median %.3g (%.3g) "
              "worst %.3g (%.3g)\n",
              where, loss, own.at("loss").get<double>(), logits, own.at("logits").get<double>(), grad_norm,
              own.at("grad_norm").get<double>(), grad_median, own.at("grad_median").get<double>(), d.grad.value,
              own.at("grad_worst").get<double>(), delta_median, own.at("delta_median").get<double>(), d.delta.value,
              own.at("delta_worst").get<double>());
  const double slack = 2.0;
  EXPECT_LE(loss, slack * own.at("loss").get<double>());
  EXPECT_LE(logits, slack * own.at("logits").get<double>());
  EXPECT_LE(grad_norm, slack * own.at("grad_norm").get<double>());
  EXPECT_LE(grad_median, slack * own.at("grad_median").get<double>());
  EXPECT_LE(delta_median, slack * own.at("delta_median").get<double>());
  EXPECT_LE(d.grad.value, slack * own.at("grad_worst").get<double>()) << d.grad.name;
  EXPECT_LE(d.delta.value, slack * own.at("delta_worst").get<double>()) << d.delta.name;
}

}  // namespace iris_test
