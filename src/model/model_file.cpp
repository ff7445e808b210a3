#include "iris/model/model_file.h"

#include <set>

#include <cstdio>
#include <cstring>

#include <torch/serialize.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/tensor_file.h"

namespace iris::model {

namespace {

void fnv1a(uint64_t& h, const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  // Word-at-a-time FNV variant: fast enough for 120 M parameters (~0.3 s).
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
}
}  // namespace

std::string compute_fingerprint(const IrisNetImpl& net) {
  uint64_t h = 0xcbf29ce484222325ULL;
  const std::string cfg = net.config().to_config().to_text();
  fnv1a(h, cfg.data(), cfg.size());
  for (const auto& p : net.named_parameters()) {
    fnv1a(h, p.key().data(), p.key().size());
    at::Tensor t = p.value().detach().to(at::kCPU).contiguous();
    fnv1a(h, t.data_ptr(), t.numel() * t.element_size());
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

namespace {
const char* kFormatV2 = "iris-model-v2";

// Parameters and buffers of `net` filled from `get(kind, name, like)`.
template <typename Get>
void fill_net(IrisNetImpl& net, Get&& get) {
  torch::NoGradGuard no_grad;
  for (auto& p : net.named_parameters()) p.value().copy_(get("param/", p.key(), p.value()));
  for (auto& b : net.named_buffers()) b.value().copy_(get("buffer/", b.key(), b.value()));
}
}  // namespace

void save_model(IrisModel& model, const std::string& path) {
  model.fingerprint = compute_fingerprint(*model.net);
  if (model.skull_strip && model.skull_strip->model_fingerprint != model.fingerprint)
    throw Error(path, "not written: its skull-strip task was encoded by other weights (fingerprint " +
                          model.skull_strip->model_fingerprint + ", these " + model.fingerprint + ")");
  TensorFile file(kFormatV2);
  file.set("config", model.config.to_config().to_text());
  file.set_strings("class_names", model.class_names);
  file.set("fingerprint", model.fingerprint);
  file.set("description", model.description);
  file.set("preprocess", model.preprocess);
  if (!model.mirror_axes.empty()) file.set("mirror_axes", model.mirror_axes);
  if (model.loss) file.set("loss", loss_weights_to_text(*model.loss));
  torch::NoGradGuard no_grad;
  for (const auto& p : model.net->named_parameters()) file.put("param/" + p.key(), p.value());
  for (const auto& b : model.net->named_buffers()) file.put("buffer/" + b.key(), b.value());
  if (model.skull_strip) {
    file.set_int("skull_strip_stages", static_cast<int64_t>(model.skull_strip->stages.size()));
    file.set("skull_strip_name", model.skull_strip->names.empty() ? "" : model.skull_strip->names[0]);
    for (size_t i = 0; i < model.skull_strip->stages.size(); ++i)
      file.put("skull_strip/stage" + std::to_string(i), model.skull_strip->stages[i].to(at::kCPU).to(at::kFloat));
  }
  file.save(path);
}

IrisModel load_model(const std::string& path) {
  const TensorFile file = TensorFile::load(path, kFormatV2, "iris model file");
  IrisModel model;
  model.config = ModelConfig::from_config(ConfigMap::parse_text(file.meta("config"), path + " (embedded config)"));
  model.class_names = file.meta_strings("class_names", static_cast<size_t>(model.config.memory_bank_size));
  model.fingerprint = file.meta("fingerprint");
  model.description = file.meta_or("description", "");
  model.preprocess = file.meta_or("preprocess", "");
  model.mirror_axes = file.meta_or("mirror_axes", "");
  if (model.mirror_axes.size() > 3 || model.mirror_axes.find_first_not_of("xyz") != std::string::npos ||
      std::set<char>(model.mirror_axes.begin(), model.mirror_axes.end()).size() != model.mirror_axes.size())
    throw Error(path, "is damaged: mirror_axes '" + model.mirror_axes + "' is not a set of the axes x, y, z");
  if (file.has_meta("loss")) model.loss = loss_weights_from_text(file.meta("loss"), path + " (its training loss)");
  // The tensors decide nothing: the config builds the network and every
  // tensor must be one of its parameters or buffers, with its shape. The
  // memory bank is checked first: an edited config must not allocate
  // gigabytes before the mismatch shows.
  for (long i = 0; i < model.config.prior_stages; ++i) {
    const std::string bank = "buffer/task_prior_" + std::to_string(i);
    const long stored = file.has(bank) && file.get(bank).dim() == 3 ? file.get(bank).size(0) : -1;
    if (stored != model.config.memory_bank_size)
      throw Error(path, "is damaged: its config has memory_bank_size " + std::to_string(model.config.memory_bank_size) +
                            " but its stored memory bank " +
                            (stored < 0 ? std::string("is missing") : "has " + std::to_string(stored) + " slots"));
  }
  model.net = IrisNet(model.config);
  size_t expected = 0;
  fill_net(*model.net, [&](const char* kind, const std::string& name, const at::Tensor& like) {
    ++expected;
    return file.get(kind + name, like.scalar_type(), like.sizes());
  });
  if (file.has_meta("skull_strip_stages")) {
    // One class, each stage shaped as the network's task tokens [1, T, C_i].
    const auto& bank = model.net->memory_bank;
    const long n = file.meta_int("skull_strip_stages", 1, 8);
    if (n != static_cast<long>(bank.size()))
      throw Error(path, "is damaged: its skull-strip task has " + std::to_string(n) + " stages, the network " +
                            std::to_string(bank.size()));
    TaskEmbedding brain;
    for (long i = 0; i < n; ++i) {
      brain.stages.push_back(
          file.get("skull_strip/stage" + std::to_string(i), at::kFloat, {1, bank[i].size(1), bank[i].size(2)}).clone());
      ++expected;
    }
    brain.labels = {1};
    brain.names = {file.meta_or("skull_strip_name", "brain")};
    model.skull_strip = std::move(brain);
  }
  if (file.tensors().size() != expected)
    throw Error(path, "holds " + std::to_string(file.tensors().size()) + " tensors but its architecture has " +
                          std::to_string(expected) + ": it is damaged or was edited");
  const std::string recomputed = compute_fingerprint(*model.net);
  if (recomputed != model.fingerprint)
    throw Error(path, "is damaged: its weights do not match its stored fingerprint (" + model.fingerprint + " vs " +
                          recomputed + ")");
  model.net->eval();
  if (model.skull_strip) model.skull_strip->model_fingerprint = model.fingerprint;
  return model;
}

void set_skull_strip(IrisModel& model, std::optional<TaskEmbedding> brain, const std::string& where) {
  if (brain) {
    if (brain->num_classes() != 1)
      throw Error(where, "has " + std::to_string(brain->num_classes()) +
                             " classes; a skull-strip task is one class, the brain");
    if (brain->model_fingerprint != model.fingerprint)
      throw Error(where, "was encoded by another model (fingerprint " + brain->model_fingerprint + ", this model " +
                             model.fingerprint + "): encode the brain task with this model");
    const auto& bank = model.net->memory_bank;
    if (brain->stages.size() != bank.size())
      throw Error(where, "has " + std::to_string(brain->stages.size()) + " stages, the network " +
                             std::to_string(bank.size()));
    for (size_t i = 0; i < bank.size(); ++i)
      if (brain->stages[i].dim() != 3 || brain->stages[i].size(1) != bank[i].size(1) ||
          brain->stages[i].size(2) != bank[i].size(2))
        throw Error(where, "stage " + std::to_string(i) + " does not have the network's token shape");
    brain->labels = {1};
    if (brain->names.empty() || brain->names[0].empty()) brain->names = {"brain"};
    for (auto& s : brain->stages) s = s.to(at::kCPU).to(at::kFloat).contiguous();
  }
  model.skull_strip = std::move(brain);
}

IrisModel load_legacy_model(const std::string& path) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error&) {
    throw Error(path, "is not a readable model file of iris' first format (missing, truncated or another format)");
  }
  c10::IValue v;
  if (!archive.try_read("format", v) || !v.isString() || v.toStringRef() != "iris-model-v1")
    throw Error(path, "is not an iris model file of the first format (format tag missing or different)");
  IrisModel model;
  archive.read("config", v);
  model.config = ModelConfig::from_config(ConfigMap::parse_text(v.toStringRef(), path + " (embedded config)"));
  archive.read("num_class_names", v);
  const long n_names = v.toInt();
  if (n_names < 0 || n_names > model.config.memory_bank_size)
    throw Error(path, "names " + std::to_string(n_names) + " classes for a memory bank of " +
                          std::to_string(model.config.memory_bank_size));
  archive.read("class_names", v);
  {
    const std::string& s = v.toStringRef();
    size_t start = 0;
    for (long i = 0; i < n_names; ++i) {
      size_t nl = i + 1 < n_names ? s.find('\n', start) : s.size();
      if (nl == std::string::npos) throw Error(path, "its class names are damaged");
      model.class_names.push_back(s.substr(start, nl - start));
      start = nl + 1;
    }
  }
  archive.read("fingerprint", v);
  model.fingerprint = v.toStringRef();
  if (archive.try_read("description", v)) model.description = v.toStringRef();
  if (archive.try_read("preprocess", v)) model.preprocess = v.toStringRef();
  model.net = IrisNet(model.config);
  fill_net(*model.net, [&](const char* kind, const std::string& name, const at::Tensor& like) {
    at::Tensor t;
    if (!archive.try_read(kind + name, t)) throw Error(path, std::string(kind) + name + " is missing");
    if (t.sizes() != like.sizes()) throw Error(path, std::string(kind) + name + " has the wrong shape");
    return t;
  });
  if (compute_fingerprint(*model.net) != model.fingerprint)
    throw Error(path, "is damaged: its weights do not match its stored fingerprint");
  model.net->eval();
  return model;
}

long class_id(const IrisModel& model, const std::string& name) {
  for (size_t i = 0; i < model.class_names.size(); ++i)
    if (model.class_names[i] == name) return static_cast<long>(i);
  std::string known;
  for (const auto& n : model.class_names)
    if (!n.empty()) known += (known.empty() ? "" : ", ") + n;
  throw SettingError("classes", "class '" + name + "' is not in the model's memory bank (known: " +
                                    (known.empty() ? "none" : known) + ")");
}

}  // namespace iris::model
