#include "iris/train/trainer.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/types.h>

#include "iris/common/atomic_file.h"
#include "iris/common/tensor_file.h"
#include "iris/train/batch_probe.h"
#include "iris/common/compat.h"
#include "iris/common/json.h"
#include "iris/common/log.h"
#include "iris/data/prefetcher.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/model/model_file.h"
#include "iris/model/losses.h"
#include "iris/train/optimizer.h"
#include "iris/train/schedule.h"
#include "iris/train/tensorboard.h"
#include "iris/train/training_step.h"

namespace fs = std::filesystem;

namespace iris::train {

namespace {
std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested = true; }
const char* kCheckpointFormat = "iris-checkpoint-v2";

// Numbered checkpoints, newest first.
std::vector<fs::path> numbered_checkpoints(const fs::path& dir) {
  std::vector<fs::path> numbered;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return numbered;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("iter_", 0) == 0 && e.path().extension() == ".ckpt") numbered.push_back(e.path());
  }
  std::sort(numbered.rbegin(), numbered.rend());
  return numbered;
}
}  // namespace

struct Trainer::OptimizerHolder {
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<GradientSynchronizer> sync;
  std::vector<at::Tensor> trainable;
};

void Trainer::install_signal_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
}
void Trainer::request_stop() { g_stop_requested = true; }

Trainer::Trainer(TrainConfig config, model::ModelConfig model_config, ConfigMap resolved,
                 data::EpisodeSampler train_sampler, std::optional<data::EpisodeSampler> val_sampler,
                 std::vector<std::string> class_names, Communicator& comm)
    : config_(std::move(config)),
      model_config_(std::move(model_config)),
      resolved_(std::move(resolved)),
      train_sampler_(std::move(train_sampler)),
      val_sampler_(std::move(val_sampler)),
      class_names_(std::move(class_names)),
      comm_(comm),
      dataset_names_(train_sampler_.dataset_names()),
      dataset_dice_sum_(dataset_names_.size(), 0.0),
      dataset_classes_(dataset_names_.size(), 0.0) {
  if (config_.batch % comm_.size() != 0)
    throw Error("train.batch", "global batch " + std::to_string(config_.batch) + " is not divisible by " +
                                   std::to_string(comm_.size()) + " ranks");
  local_batch_ = config_.batch / comm_.size();
  config_.check_against(model_config_.max_patch_size);
  if (config_.micro_batch > 0) micro_batch_ = std::min(config_.micro_batch, local_batch_);
  else micro_batch_ = local_batch_;
  if (comm_.backend() != "none" && comm_.device() != c10::Device(config_.device))
    throw Error("train.device", "the communicator runs on " + comm_.device().str() + " but training on " +
                                    config_.device + " (make the communicator with the training device)");
  if (static_cast<long>(class_names_.size()) > model_config_.memory_bank_size)
    throw Error("model.memory_bank_size", "the datasets name " + std::to_string(class_names_.size()) +
                                              " classes but the memory bank holds " +
                                              std::to_string(model_config_.memory_bank_size));
  at::manual_seed(static_cast<uint64_t>(config_.seed));
  net_ = model::IrisNet(model_config_);
  if (!config_.init_from.empty()) load_initial_weights();
  net_->to(c10::Device(config_.device));
  net_->set_channels_last(true);
  if (config_.activation_checkpointing) net_->set_activation_checkpointing(true);
  // Every rank starts from rank 0's weights.
  std::vector<at::Tensor> state;
  for (auto& p : net_->parameters()) state.push_back(p.data());
  for (auto& b : net_->buffers()) state.push_back(b);
  comm_.broadcast(state);
  build_optimizer();
  if (config_.weight_ema > 0) {
    for (const auto& p : net_->named_parameters()) ema_.emplace_back(p.key(), p.value().detach().clone());
    for (const auto& b : net_->named_buffers())
      if (at::isFloatingType(b.value().scalar_type())) ema_buffers_.emplace_back(b.key(), b.value().detach().clone());
  }
}

Trainer::~Trainer() = default;

void Trainer::load_initial_weights() {
  const std::string& path = config_.init_from;
  const model::IrisModel init = model::load_model(path);
  // Same shapes are not enough: settings without weights of their own (head
  // size, attention switches, bank momentum) must agree too.
  {
    const auto a = init.config.to_config().entries(), b = model_config_.to_config().entries();
    std::string differing;
    for (const auto& [k, v] : b) {
      if (k == "memory_bank_size" || k == "max_patch_size" || k == "dropout") continue;  // free to change
      const auto it = a.find(k);
      if (it == a.end() || it->second != v)
        differing += " " + k + " (" + (it == a.end() ? std::string("unset") : it->second) + " there, " + v + " here)";
    }
    if (!differing.empty()) throw Error(path, "its model settings differ from this config's model:" + differing);
  }
  at::NoGradGuard no_grad;
  auto is_bank = [](const std::string& name) { return name.rfind("task_prior_", 0) == 0; };
  auto copy_all = [&](auto mine, auto theirs, const char* what) {
    for (auto& item : mine) {
      if (is_bank(item.key())) continue;  // by class name, below
      const at::Tensor* src = theirs.find(item.key());
      if (!src)
        throw Error(path, std::string("has no ") + what + " '" + item.key() +
                              "': it was trained with another architecture than model: of this config");
      if (src->sizes() != item.value().sizes())
        throw Error(path, std::string(what) + " '" + item.key() + "' has shape " + c10::str(src->sizes()) +
                              " but this config's model needs " + c10::str(item.value().sizes()));
      item.value().copy_(*src);
    }
  };
  copy_all(net_->named_parameters(), init.net->named_parameters(), "parameter");
  copy_all(net_->named_buffers(), init.net->named_buffers(), "buffer");
  // Memory-bank rows belong to class names: a class both runs know keeps its
  // learnt prototype, whatever its id; new classes start fresh.
  const auto theirs = init.net->named_buffers();
  for (auto& item : net_->named_buffers()) {
    if (!is_bank(item.key())) continue;
    const at::Tensor* src = theirs.find(item.key());
    if (!src || src->sizes().slice(1) != item.value().sizes().slice(1))
      throw Error(path, "memory bank '" + item.key() + "' does not match this config's model");
    for (size_t j = 0; j < class_names_.size() && static_cast<long>(j) < item.value().size(0); ++j) {
      const auto at = std::find(init.class_names.begin(), init.class_names.end(), class_names_[j]);
      const long i = at - init.class_names.begin();
      if (at != init.class_names.end() && i < src->size(0)) item.value()[static_cast<long>(j)].copy_((*src)[i]);
    }
  }
}

void Trainer::build_optimizer() {
  opt_ = std::make_unique<OptimizerHolder>();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : net_->named_parameters()) named.emplace_back(p.key(), p.value());
  std::vector<ParamGroup> nonempty = make_param_groups(named, config_.param_groups, config_.weight_decay, &opt_->trainable);
  OptimizerOptions o;
  o.kind = config_.optimizer;
  o.eps = config_.optimizer_eps;
  opt_->optimizer = std::make_unique<Optimizer>(std::move(nonempty), o);
  opt_->sync = std::make_unique<GradientSynchronizer>(comm_, opt_->trainable);
}

std::string Trainer::last_checkpoint() const { return (fs::path(config_.output_dir) / "checkpoints" / "last.ckpt").string(); }
std::string Trainer::final_model_path() const { return (fs::path(config_.output_dir) / "model.iris").string(); }

// What the passes of one step add up to on this rank.
struct Trainer::Passes {
  double loss_sum = 0, dice_sum = 0, bce_sum = 0, valid_sum = 0;
  double last[3] = {0, 0, 0};  // the last pass's loss, region and BCE terms
  int count = 0;
  std::vector<at::Tensor> tokens;  // task tokens of every episode (memory bank), float32
  // Per dataset (columns): region-loss sum over valid classes (row 0) and
  // their count (row 1), on the device; one copy back per step.
  at::Tensor by_dataset;
};

StepMetrics Trainer::step(long iteration) {
  const auto t0 = std::chrono::steady_clock::now();
  // This rank's share of the global batch: episodes are numbered globally so
  // that N ranks see exactly the episodes one process would.
  if (!loader_) {
    loader_ = std::make_unique<data::EpisodePrefetcher>(
        [this](long it) { return train_sampler_.sample(it * comm_.size() + comm_.rank(), local_batch_); },
        config_.loader_workers, config_.prefetch);
  }
  const data::EpisodeBatch b = loader_->get(iteration);
  const double data_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const Passes passes = forward_backward(b);
  StepMetrics m;
  m.iteration = iteration;
  apply_update(iteration, m);
  if (config_.update_memory_bank) update_memory_bank(b, passes.tokens);
  if (!ema_buffers_.empty()) {
    // After the bank's own update, as the author's EMA follows the forward
    // pass that updated it.
    const auto live = net_->named_buffers();
    std::vector<at::Tensor> shadows, buffers;
    for (auto& [name, shadow] : ema_buffers_) {
      shadows.push_back(shadow);  // same storage
      buffers.push_back(live[name]);
    }
    update_weight_ema(shadows, buffers, config_.weight_ema);
  }
  if (!dataset_names_.empty()) add_dataset_losses(passes.by_dataset);
  // Means over this rank's valid classes (one pass: exactly that pass's terms).
  m.loss = passes.count == 1 ? passes.last[0] : passes.loss_sum / passes.valid_sum;
  m.dice_loss = passes.count == 1 ? passes.last[1] : passes.dice_sum / passes.valid_sum;
  m.bce_loss = passes.count == 1 ? passes.last[2] : passes.bce_sum / passes.valid_sum;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.data_seconds = data_seconds;
  return m;
}

Trainer::Passes Trainer::forward_backward(const data::EpisodeBatch& b) {
  const c10::Device device(config_.device);
  const at::Tensor valid_all = b.valid.to(device);
  // Normalise by the global number of valid classes so the all-reduced mean
  // of gradients equals the single-process gradient. Every tensor handed to a
  // collective lives on the training device (NCCL takes nothing else).
  const double global_valid = std::max(1.0, comm_.sum(valid_all.sum().item<double>()));

  net_->train();
  opt_->optimizer->zero_grad();
  // Micro-batches: gradients of all but the last pass accumulate in .grad;
  // the last pass sends the sum (GradientSynchronizer).
  const long B = local_batch_;
  const long D = static_cast<long>(dataset_names_.size());
  Passes p;
  p.by_dataset = at::zeros({2, D}, at::TensorOptions().device(device).dtype(at::kFloat));
  for (long first = 0; first < B; first += micro_batch_) {
    const long n = std::min(micro_batch_, B - first);
    const bool last = first + n >= B;
    opt_->sync->set_accumulating(!last);
    at::Tensor q = b.query.narrow(0, first, n).to(device), qm = b.query_masks.narrow(0, first, n).to(device);
    at::Tensor r = b.reference.narrow(0, first, n).to(device), rm = b.reference_masks.narrow(0, first, n).to(device);
    at::Tensor valid = valid_all.narrow(0, first, n);
    const EpisodeForward forward = episode_forward(*net_, q, r, rm, config_.bf16);
    const model::LossTerms terms = model::dice_bce_loss(forward.logits, qm, valid, loss_weights(config_));
    const double part_valid = std::max(1.0, valid.sum().item<double>());
    // dice_bce_loss averages over this pass's valid classes; rescale to the global count.
    at::Tensor loss = terms.total * (part_valid / global_valid) * comm_.size();
    loss.backward();
    p.last[0] = terms.total.item<double>();
    p.last[1] = terms.dice.item<double>();
    p.last[2] = terms.bce.item<double>();
    if (D > 0) {
      const at::Tensor item_dataset =
          at::tensor(std::vector<long>(b.dataset.begin() + first, b.dataset.begin() + first + n)).to(device);
      const at::Tensor v = valid.to(at::kFloat);
      p.by_dataset[0].index_add_(0, item_dataset, (terms.dice_per_class.to(at::kFloat) * v).sum(1));
      p.by_dataset[1].index_add_(0, item_dataset, v.sum(1));
    }
    p.loss_sum += p.last[0] * part_valid;
    p.dice_sum += p.last[1] * part_valid;
    p.bce_sum += p.last[2] * part_valid;
    p.valid_sum += part_valid;
    ++p.count;
    if (config_.update_memory_bank) {
      if (p.tokens.empty()) p.tokens.resize(forward.tokens.size());
      for (size_t i = 0; i < forward.tokens.size(); ++i) {
        at::Tensor t = forward.tokens[i].detach().to(at::kFloat);
        p.tokens[i] = p.tokens[i].defined() ? at::cat({p.tokens[i], t}) : t;
      }
    }
  }
  opt_->sync->finish();
  return p;
}

void Trainer::apply_update(long iteration, StepMetrics& m) {
  m.grad_norm = clip_grad_norm(opt_->optimizer->groups(), config_.grad_clip);
  ScheduleOptions s;
  s.kind = config_.schedule;
  s.base_lr = config_.lr;
  s.warmup = config_.warmup;
  s.total = config_.iterations;
  s.final_ratio = config_.final_lr_ratio;
  m.lr = learning_rate(s, iteration);
  opt_->optimizer->step(m.lr);
  if (!ema_.empty()) {
    std::vector<at::Tensor> shadow;
    for (auto& [name, t] : ema_) shadow.push_back(t);  // same storage
    update_weight_ema(shadow, net_->parameters(), config_.weight_ema);
  }
}

void Trainer::update_memory_bank(const data::EpisodeBatch& b, const std::vector<at::Tensor>& tokens) {
  at::NoGradGuard no_grad;
  // Gather every rank's tokens and ids so all ranks apply the same updates in
  // the same (global episode) order.
  const c10::Device device(config_.device);
  const long GB = config_.batch, K = b.class_ids.size(1), off = comm_.rank() * local_batch_;
  const auto on_device = at::TensorOptions().device(device);
  at::Tensor ids = at::zeros({GB, K}, on_device.dtype(at::kFloat));
  ids.narrow(0, off, local_batch_).copy_((b.class_ids + 1).to(device, at::kFloat));
  std::vector<at::Tensor> gathered;
  for (const auto& t : tokens) {
    at::Tensor full = at::zeros({GB, t.size(1), t.size(2), t.size(3)}, on_device.dtype(at::kFloat));
    full.narrow(0, off, local_batch_).copy_(t);
    gathered.push_back(full);
  }
  comm_.allreduce_sum(ids);
  for (auto& g : gathered) comm_.allreduce_sum(g);
  net_->update_memory_bank(gathered, ids.round().to(at::kLong) - 1);
}

void Trainer::add_dataset_losses(const at::Tensor& by_dataset) {
  at::Tensor all = by_dataset.clone();
  comm_.allreduce_sum(all);
  const at::Tensor h = all.to(at::kDouble).cpu().contiguous();
  const auto a = h.accessor<double, 2>();
  for (long i = 0; i < static_cast<long>(dataset_names_.size()); ++i) {
    dataset_dice_sum_[i] += a[0][i];
    dataset_classes_[i] += a[1][i];
  }
}

long Trainer::probe_micro_batch() {
  const c10::Device device(config_.device);
  BatchProbeOptions o;
  o.largest = local_batch_;
  auto step = [&](long size) {
    // Forward and backward only: no optimiser step, no memory-bank update,
    // no collective; the weights stay as they are.
    data::EpisodeBatch b = train_sampler_.sample(-1 - size, size);
    net_->train();
    opt_->sync->set_accumulating(true);
    const at::Tensor logits =
        episode_forward(*net_, b.query.to(device), b.reference.to(device), b.reference_masks.to(device), config_.bf16).logits;
    model::LossTerms terms = model::dice_bce_loss(logits, b.query_masks.to(device), b.valid.to(device), loss_weights(config_));
    terms.total.backward();
    opt_->optimizer->zero_grad();
  };
  auto peak = [&]() -> double {
    if (!device.is_cuda()) return 0.0;
    const double total = static_cast<double>(compat::cuda_total_memory(device.has_index() ? device.index() : 0));
    return total > 0 ? static_cast<double>(compat::cuda_peak_allocated_bytes(device.has_index() ? device.index() : 0)) / total : 0.0;
  };
  auto reset = [&] {
    opt_->optimizer->zero_grad();
    if (device.is_cuda()) {
      compat::cuda_empty_cache();
      compat::cuda_reset_peak(device.has_index() ? device.index() : 0);
    }
  };
  BatchProbeResult r;
  if (device.is_cuda()) {
    r = iris::train::probe_micro_batch(step, peak, reset, o);
  } else {
    // A CPU has no out-of-memory error to probe with: the whole batch in one pass.
    r.micro_batch = local_batch_;
    r.log.push_back("micro-batch " + std::to_string(local_batch_) + ": the whole per-rank batch (no probing on " +
                    device.str() + ")");
  }
  opt_->sync->set_accumulating(false);
  // Every rank takes the smallest size any rank found.
  at::Tensor sizes = at::zeros({comm_.size()}, at::TensorOptions().dtype(at::kDouble).device(comm_.device()));
  sizes[comm_.rank()] = static_cast<double>(r.micro_batch);
  comm_.allreduce_sum(sizes);
  const long chosen = static_cast<long>(sizes.min().item<double>());
  if (comm_.rank() == 0) {
    for (const auto& line : r.log) log::info("probing " + line);
    log::info("train.micro_batch auto -> " + std::to_string(chosen) + " (" +
              std::to_string((local_batch_ + chosen - 1) / chosen) + " pass(es) per step for " +
              std::to_string(local_batch_) + " episodes per rank)");
  }
  return chosen;
}

ValidationResult Trainer::validate() {
  ValidationResult out;
  if (!val_sampler_) return out;
  at::NoGradGuard no_grad;
  const c10::Device device(config_.device);
  // Score the weights that export_model() would ship: swap the EMA shadow
  // in, and the live weights and training mode back whatever happens.
  std::vector<at::Tensor> live;
  std::vector<std::pair<std::string, at::Tensor>> live_buffers;
  struct Restore {
    model::IrisNet& net;
    std::vector<at::Tensor>& live;
    std::vector<std::pair<std::string, at::Tensor>>& live_buffers;
    ~Restore() {
      at::NoGradGuard no_grad;
      size_t i = 0;
      if (!live.empty())
        for (auto& p : net->parameters()) p.detach().copy_(live[i++]);
      auto buffers = net->named_buffers();
      for (const auto& [name, value] : live_buffers) buffers[name].copy_(value);
      net->train();
    }
  } restore{net_, live, live_buffers};
  if (!ema_.empty()) {
    size_t i = 0;
    for (auto& p : net_->parameters()) {
      live.push_back(p.detach().clone());
      p.detach().copy_(ema_[i++].second);
    }
    auto buffers = net_->named_buffers();
    for (const auto& [name, shadow] : ema_buffers_) {
      live_buffers.emplace_back(name, buffers[name].clone());
      buffers[name].copy_(shadow);
    }
  }
  net_->eval();
  const std::vector<std::string> names = val_sampler_->dataset_names();
  const long D = static_cast<long>(names.size());
  // Per dataset (columns): Dice sum over valid classes (row 0), their count
  // (row 1). Rank r scores episodes r, r + size, ...: the same episodes as
  // one process, in a size-th of the time; one all-reduce at the end.
  at::Tensor sums = at::zeros({2, D}, at::TensorOptions().dtype(at::kDouble).device(device));
  for (long e = comm_.rank(); e < config_.validation_episodes; e += comm_.size()) {
    data::EpisodeBatch b = val_sampler_->sample(e, 1);
    const long d = b.dataset.empty() ? -1 : b.dataset[0];
    if (d < 0 || d >= D) continue;
    at::Tensor logits = net_->forward(b.query.to(device), b.reference.to(device), b.reference_masks.to(device));
    at::Tensor pred = logits[0].gt(0).to(at::kFloat).flatten(1);           // [K, voxels]
    at::Tensor truth = b.query_masks[0].to(device).gt(0.5).to(at::kFloat).flatten(1);
    at::Tensor valid = b.valid[0].to(device, at::kDouble);                   // [K]
    // (counts summed in double: exact at any patch size)
    at::Tensor denom = pred.sum(1, false, at::kDouble) + truth.sum(1, false, at::kDouble);
    at::Tensor hits = (pred * truth).sum(1, false, at::kDouble);
    // A class absent from both the prediction and the truth scores 1.
    at::Tensor dice = at::where(denom.gt(0), 2 * hits / denom.clamp_min(1), at::ones_like(denom));
    sums[0][d] += (dice * valid).sum();
    sums[1][d] += valid.sum();
  }
  comm_.allreduce_sum(sums);
  at::Tensor host = sums.cpu();
  double total = 0;
  for (long d = 0; d < D; ++d) {
    const double n = host[1][d].item<double>();
    if (n <= 0) continue;
    total += host[0][d].item<double>();
    out.classes += std::lround(n);
    out.by_dataset.emplace_back(names[d], host[0][d].item<double>() / n);
  }
  if (out.classes > 0) out.dice = total / out.classes;
  return out;
}

void Trainer::save_checkpoint(long next_iteration, bool final_copy) {
  if (comm_.rank() != 0) return;
  const fs::path dir = fs::path(config_.output_dir) / "checkpoints";
  fs::create_directories(dir);
  TensorFile a(kCheckpointFormat);
  a.set("config", resolved_.to_text());
  a.set_int("iteration", next_iteration);
  a.set_int("micro_batch", micro_batch_);
  for (const auto& p : net_->named_parameters()) a.put("param/" + p.key(), p.value());
  for (const auto& b : net_->named_buffers()) a.put("buffer/" + b.key(), b.value());
  for (const auto& [k, v] : ema_) a.put("ema/" + k, v);
  for (const auto& [k, v] : ema_buffers_) a.put("ema_buffer/" + k, v);
  opt_->optimizer->save(a, "optim/");
  a.put("rng/torch", at::detail::getDefaultCPUGenerator().get_state());
  // The per-dataset Dice sums since the last log line (already over all
  // ranks), so that a resumed run's next line is the uninterrupted one.
  const long D = static_cast<long>(dataset_names_.size());
  at::Tensor since_log = at::zeros({2, D}, at::kDouble);
  for (long i = 0; i < D; ++i) {
    since_log[0][i] = dataset_dice_sum_[i];
    since_log[1][i] = dataset_classes_[i];
  }
  a.put("log/dice_loss_by_dataset", since_log);
  a.set_strings("log/datasets", dataset_names_);
  const std::string last = (dir / "last.ckpt").string();
  a.save(last);
  if (final_copy) {
    std::ostringstream name;
    name << "iter_" << std::setw(7) << std::setfill('0') << next_iteration << ".ckpt";
    a.save((dir / name.str()).string());
    // Keep the newest few numbered checkpoints.
    auto numbered = numbered_checkpoints(dir);
    for (size_t i = static_cast<size_t>(std::max<long>(0, config_.keep_checkpoints)); i < numbered.size(); ++i)
      fs::remove(numbered[i]);
  }
}

std::string Trainer::choose_checkpoint(ResumeMode mode) const {
  const fs::path dir = fs::path(config_.output_dir) / "checkpoints";
  const std::string last = last_checkpoint();
  std::vector<std::string> candidates;
  if (fs::exists(last)) candidates.push_back(last);
  for (const auto& p : numbered_checkpoints(dir)) candidates.push_back(p.string());
  if (candidates.empty()) {
    if (mode == ResumeMode::kAuto) return "";
    throw InputError(last, setting_ref("resume") + " given but there is no checkpoint to resume from");
  }
  std::string first_problem;
  for (const auto& c : candidates) {
    try {
      TensorFile::load(c, kCheckpointFormat, "iris training checkpoint");
    } catch (const Error& e) {
      if (first_problem.empty()) first_problem = e.what();
      continue;
    }
    if (c == last || mode == ResumeMode::kAuto) {
      if (c != last && comm_.rank() == 0)
        log::warn(first_problem + "; resuming from " + c + " instead");
      return c;
    }
    throw InputError(last, "cannot resume from it (" + first_problem + "); " + c +
                               " is intact: resume from it with " + setting_ref("resume") + "=auto");
  }
  throw Error(dir.string(), "no intact checkpoint to resume from (" + first_problem + ")");
}

long Trainer::load_checkpoint(const std::string& path) {
  const TensorFile a = TensorFile::load(path, kCheckpointFormat, "iris training checkpoint");
  const long iteration = a.meta_int("iteration", 0, config_.iterations);
  at::NoGradGuard no_grad;
  auto restore = [&](const std::string& name, at::Tensor& into) {
    if (!a.has(name)) throw Error(path, "'" + name + "' is missing: it was written by another architecture or run");
    into.copy_(a.get(name, into.scalar_type(), into.sizes()));
  };
  for (auto& p : net_->named_parameters()) restore("param/" + p.key(), p.value());
  for (auto& b : net_->named_buffers()) restore("buffer/" + b.key(), b.value());
  for (auto& [k, t] : ema_) {
    if (!a.has("ema/" + k)) throw Error(path, "EMA weights missing (was weight_ema 0 in that run?)");
    restore("ema/" + k, t);
  }
  // Checkpoints written before buffers were averaged hold none: the average
  // starts again from the live buffer.
  bool buffers_missing = false;
  for (auto& [k, t] : ema_buffers_) {
    if (a.has("ema_buffer/" + k)) {
      restore("ema_buffer/" + k, t);
    } else {
      t.copy_(net_->named_buffers()[k]);
      buffers_missing = true;
    }
  }
  if (buffers_missing && comm_.rank() == 0)
    log::warn(path + " holds no EMA of the memory bank (an older iris wrote it): the average starts from the bank now");
  opt_->optimizer->load(a, "optim/");
  if (a.has("rng/torch")) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(a.get("rng/torch"));
  }
  // (absent from checkpoints of earlier versions; not restored for another
  // list of datasets: the next line then covers the steps since the resume)
  const long D = static_cast<long>(dataset_names_.size());
  if (a.has("log/dice_loss_by_dataset") && a.has_meta("log/datasets") &&
      a.meta_strings("log/datasets", 1 << 16) == dataset_names_) {
    const at::Tensor since_log = a.get("log/dice_loss_by_dataset", at::kDouble, {2, D});
    for (long i = 0; i < D; ++i) {
      dataset_dice_sum_[i] = since_log[0][i].item<double>();
      dataset_classes_[i] = since_log[1][i].item<double>();
    }
  }
  return iteration;
}

void Trainer::export_model() {
  if (comm_.rank() != 0) return;
  model::IrisModel out;
  out.config = model_config_;
  out.net = model::IrisNet(model_config_);
  at::NoGradGuard no_grad;
  auto src = net_->named_parameters();
  size_t i = 0;
  // The EMA weights are the ones to ship (they generalise better).
  for (auto& p : out.net->named_parameters()) {
    p.value().copy_(ema_.empty() ? src[p.key()] : ema_[i].second);
    ++i;
  }
  auto src_buffers = net_->named_buffers();
  for (auto& b : out.net->named_buffers()) b.value().copy_(src_buffers[b.key()]);
  for (const auto& [name, shadow] : ema_buffers_) out.net->named_buffers()[name].copy_(shadow);
  out.class_names = class_names_;
  out.description = "trained with iris-train (" + config_.output_dir + ")";
  out.preprocess = resolved_.subtree("preprocess").to_text();
  out.mirror_axes = config_.episodes.augment.enabled ? config_.episodes.augment.mirror_axes : "";
  out.loss = loss_weights(config_);
  model::save_model(out, final_model_path());
}

void Trainer::log(const StepMetrics& m, const ValidationResult* val) {
  // Mean Dice loss per dataset over the classes since the last log line.
  std::vector<std::pair<std::string, double>> by_dataset;
  for (size_t i = 0; i < dataset_names_.size(); ++i)
    if (dataset_classes_[i] > 0) by_dataset.emplace_back(dataset_names_[i], dataset_dice_sum_[i] / dataset_classes_[i]);
  std::fill(dataset_dice_sum_.begin(), dataset_dice_sum_.end(), 0.0);
  std::fill(dataset_classes_.begin(), dataset_classes_.end(), 0.0);
  if (comm_.rank() != 0) return;
  fs::create_directories(config_.output_dir);
  // One JSON object per line; a non-finite loss is written as null.
  Json line = {{"iteration", m.iteration},       {"loss", number(m.loss)},       {"dice_loss", number(m.dice_loss)},
               {"bce_loss", number(m.bce_loss)}, {"lr", number(m.lr)},           {"grad_norm", number(m.grad_norm)},
               {"seconds", number(m.seconds)},   {"data_seconds", number(m.data_seconds)}};
  if (val && !std::isnan(val->dice)) {
    line["val_dice"] = number(val->dice);
    Json per = Json::object();
    for (const auto& [name, value] : val->by_dataset) per[name] = number(value);
    line["val_dice_by_dataset"] = per;
  }
  if (!by_dataset.empty()) {
    Json per = Json::object();
    for (const auto& [name, value] : by_dataset) per[name] = number(value);
    line["dice_loss_by_dataset"] = per;
  }
  append_text_file((fs::path(config_.output_dir) / "metrics.jsonl").string(), dump(line, -1));
  if (!config_.tensorboard) return;
  try {
    if (!tensorboard_) tensorboard_ = std::make_unique<TensorBoardWriter>((fs::path(config_.output_dir) / "tensorboard").string());
    const std::pair<const char*, double> scalars[] = {
        {"train/loss", m.loss},           {"train/dice_loss", m.dice_loss}, {"train/bce_loss", m.bce_loss},
        {"train/lr", m.lr},               {"train/grad_norm", m.grad_norm}, {"time/seconds_per_step", m.seconds},
        {"time/data_wait_seconds", m.data_seconds}};
    for (const auto& [tag, value] : scalars) tensorboard_->add_scalar(tag, value, m.iteration);
    if (val && !std::isnan(val->dice)) {
      tensorboard_->add_scalar("val/dice", val->dice, m.iteration);
      for (const auto& [name, value] : val->by_dataset) tensorboard_->add_scalar("val/dice/" + name, value, m.iteration);
    }
    for (const auto& [name, value] : by_dataset) tensorboard_->add_scalar("train/dice_loss/" + name, value, m.iteration);
  } catch (const Error& e) {
    // Losing the TensorBoard copy must not stop a training run: metrics.jsonl has it all.
    log::warn(std::string(e.what()) + "; TensorBoard logging stops");
    tensorboard_.reset();
    config_.tensorboard = false;
  }
}

TrainOutcome Trainer::run(ResumeMode resume) {
  const fs::path checkpoints = fs::path(config_.output_dir) / "checkpoints";
  if (comm_.rank() == 0) {
    // Temporary files of a run that was killed mid-write (kill -9, a node lost).
    const int stale = remove_stale_temporaries(checkpoints.string()) + remove_stale_temporaries(config_.output_dir);
    if (stale > 0) log::info("removed " + std::to_string(stale) + " temporary file(s) of an interrupted run");
  }
  long start = 0;
  if (resume != ResumeMode::kNone) {
    const std::string from = choose_checkpoint(resume);
    if (!from.empty()) start = load_checkpoint(from);
  }
  if (config_.micro_batch < 0) {
    micro_batch_ = probe_micro_batch();
    resolved_.set("train.micro_batch", std::to_string(micro_batch_), "probed (train.micro_batch: auto)");
  }
  if (comm_.rank() == 0) {
    fs::create_directories(config_.output_dir);
    write_text_file((fs::path(config_.output_dir) / "config.yaml").string(),
                    "# resolved configuration of this run\n" + resolved_.to_text());
  }
  const auto t_start = std::chrono::steady_clock::now();
  double rate_seconds = 0;
  long rate_steps = 0;
  for (long it = start; it < config_.iterations; ++it) {
    StepMetrics m = step(it);
    history_.push_back(m);
    rate_seconds += m.seconds;
    ++rate_steps;
    std::optional<ValidationResult> val;
    if (val_sampler_ && config_.validate_every > 0 && (it + 1) % config_.validate_every == 0) val = validate();
    if (val && std::isnan(val->dice)) val.reset();  // no valid class to score
    if ((it + 1) % config_.log_every == 0 || it + 1 == config_.iterations || val) {
      log(m, val ? &*val : nullptr);
      if (comm_.rank() == 0) {
        const double per_step = rate_seconds / std::max<long>(1, rate_steps);
        static const std::vector<std::pair<std::string, double>> none;
        if (progress_)
          progress_({m, config_.iterations, 1.0 / per_step, per_step * (config_.iterations - it - 1),
                     val ? val->dice : std::nan(""), val ? val->by_dataset : none});
        rate_seconds = 0;
        rate_steps = 0;
      }
    }
    // Ranks agree on stopping so none waits in a collective alone.
    const bool stop_here = g_stop_requested || (stop_after_ >= 0 && it + 1 >= stop_after_);
    if (comm_.sum(stop_here ? 1.0 : 0.0) > 0 && it + 1 < config_.iterations) {
      save_checkpoint(it + 1, false);
      comm_.barrier();
      return TrainOutcome::kPreempted;
    }
    if (config_.checkpoint_every > 0 && (it + 1) % config_.checkpoint_every == 0) save_checkpoint(it + 1, true);
  }
  save_checkpoint(config_.iterations, true);
  export_model();
  comm_.barrier();
  if (comm_.rank() == 0) {
    remove_stale_temporaries(checkpoints.string());
    remove_stale_temporaries(config_.output_dir);
  }
  (void)t_start;
  return TrainOutcome::kFinished;
}

}  // namespace iris::train
