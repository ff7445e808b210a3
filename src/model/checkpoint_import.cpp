#include "iris/model/checkpoint_import.h"

#include <map>
#include <regex>
#include <sstream>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/torch_checkpoint.h"

namespace iris::model {

namespace {

const at::Tensor* find(const std::map<std::string, at::Tensor>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? nullptr : &it->second;
}

long count_indices(const std::map<std::string, at::Tensor>& m, const std::string& prefix) {
  long n = 0;
  while (true) {
    const std::string p = prefix + std::to_string(n) + ".";
    auto it = m.lower_bound(p);
    if (it == m.end() || it->first.compare(0, p.size(), p) != 0) return n;
    ++n;
  }
}

}  // namespace

ModelConfig infer_config_from_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                         const std::string& source) {
  std::map<std::string, at::Tensor> m(tensors.begin(), tensors.end());
  auto need = [&](const std::string& key) -> const at::Tensor& {
    const at::Tensor* t = find(m, key);
    if (!t) throw Error(source, "cannot infer the architecture: key '" + key + "' is missing (is this an IRIS/MASS checkpoint?)");
    return *t;
  };
  ModelConfig c;
  const at::Tensor& stem = need("encoder.inc.conv1.weight");
  c.in_channels = stem.size(1);
  c.channels = {stem.size(0)};
  c.blocks_per_stage.clear();
  for (int s = 1; s <= 4; ++s) {
    const std::string prefix = "encoder.down" + std::to_string(s) + ".conv.";
    c.channels.push_back(need(prefix + "1.conv1.conv.weight").size(0));
    // Index 0 is the max-pool (no parameters): blocks are 1..n.
    long blocks = 0;
    while (find(m, prefix + std::to_string(blocks + 1) + ".conv1.conv.weight")) ++blocks;
    c.blocks_per_stage.push_back(blocks);
  }
  c.prior_stages = count_indices(m, "task_embedding.");
  if (c.prior_stages == 0) throw Error(source, "cannot infer the architecture: no task_embedding.* keys");
  c.query_tokens = need("task_embedding.0.task_query").size(0);
  c.attention_blocks = count_indices(m, "task_embedding.0.attn_layers.");
  c.mlp_ratio = need("task_embedding.0.attn_layers.0.query_ffn_1.fn.fc1.weight").size(0) / c.stage_channels(0);
  c.memory_bank_size = need("task_prior_0").size(0);
  const at::Tensor& pos = need("task_embedding.0.pos_embed.embedding");
  if (pos.size(2) != pos.size(3) || pos.size(3) != pos.size(4))
    throw Error(source, "non-cubic positional embedding is not supported");
  c.max_patch_size = pos.size(2);
  c.head_dim = 32;
  c.foreground_token_in_attention = true;
  c.validate();
  return c;
}

ModelConfig import_config(const std::string& checkpoint, const ConfigMap& given, const std::string& prefer_key) {
  const TorchCheckpoint ckpt = read_torch_checkpoint(checkpoint, prefer_key);
  if (given.has("preset"))
    throw Error("preset", "does not apply to an import: the architecture is read off " + checkpoint +
                              " (set single keys instead)");
  ConfigMap merged = infer_config_from_state_dict(ckpt.tensors, checkpoint).to_config();
  if (!given.has("head_dim"))
    throw InputError(checkpoint, "its head width cannot be read off its tensors: give it (" + setting_ref("overrides") + " head_dim=N, or "
                                 "head_dim in " + setting_ref("config") + "; the author's models use 32)");
  for (const auto& [key, value] : given.entries()) merged.set(key, value, given.origin(key));
  return ModelConfig::from_config(merged);
}

IrisModel import_mass_checkpoint(const std::string& checkpoint, const std::optional<ModelConfig>& config,
                                 ImportReport* report, const std::string& prefer_key) {
  TorchCheckpoint ckpt = read_torch_checkpoint(checkpoint, prefer_key);
  IrisModel model;
  model.config = config ? *config : infer_config_from_state_dict(ckpt.tensors, checkpoint);
  model.net = IrisNet(model.config);
  model.description = "imported from " + checkpoint + (ckpt.source_key.empty() ? "" : " [" + ckpt.source_key + "]");
  // The author's trainer has one loss: adaptive Tversky + BCE, 1:1
  // (IRIS-SPEC); in-context tuning of the import optimises the same.
  model.loss = LossWeights{RegionLoss::adaptive_tversky, 1.0, 1.0};

  std::map<std::string, at::Tensor> source(ckpt.tensors.begin(), ckpt.tensors.end());
  std::vector<std::string> missing, mismatched;
  std::map<std::string, bool> used;
  torch::NoGradGuard no_grad;
  auto copy = [&](const std::string& key, at::Tensor& target) {
    const at::Tensor* t = find(source, key);
    if (!t) {
      missing.push_back(key);
      return;
    }
    used[key] = true;
    if (t->sizes() != target.sizes()) {
      std::ostringstream s;
      s << key << " (checkpoint " << t->sizes() << ", model " << target.sizes() << ")";
      mismatched.push_back(s.str());
      return;
    }
    target.copy_(*t);
  };
  for (auto& p : model.net->named_parameters()) copy(p.key(), p.value());
  for (auto& b : model.net->named_buffers()) copy(b.key(), b.value());
  std::vector<std::string> unexpected;
  for (const auto& [k, v] : source)
    if (!used.count(k)) unexpected.push_back(k);

  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::ostringstream s;
    auto list = [&](const char* title, const std::vector<std::string>& keys) {
      if (keys.empty()) return;
      s << "\n  " << title << " (" << keys.size() << "):";
      for (size_t i = 0; i < keys.size() && i < 20; ++i) s << "\n    " << keys[i];
      if (keys.size() > 20) s << "\n    ... and " << keys.size() - 20 << " more";
    };
    s << "checkpoint does not match the architecture";
    list("missing keys", missing);
    list("unexpected keys", unexpected);
    list("shape mismatches", mismatched);
    throw Error(checkpoint, s.str());
  }
  if (report) {
    report->source_key = ckpt.source_key;
    report->tensors = static_cast<long>(ckpt.tensors.size());
  }
  model.net->eval();
  return model;
}

}  // namespace iris::model
