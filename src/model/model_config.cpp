#include "iris/model/model_config.h"

#include <functional>
#include <sstream>

#include "iris/common/error.h"

namespace iris::model {

long ModelConfig::head_input_dim() const {
  long sum = 0;
  for (long i = 0; i < prior_stages; ++i) sum += stage_channels(i);
  return sum;
}

void ModelConfig::validate() const {
  auto fail = [](const std::string& key, const std::string& why) { throw Error("model." + key, why); };
  if (in_channels < 1) fail("in_channels", "must be at least 1");
  if (channels.size() != 5) fail("channels", "needs 5 widths (stem + 4 stages), got " + std::to_string(channels.size()));
  for (long c : channels)
    if (c < 1) fail("channels", "widths must be positive");
  if (blocks_per_stage.size() != 4)
    fail("blocks_per_stage", "needs 4 counts, got " + std::to_string(blocks_per_stage.size()));
  for (long b : blocks_per_stage)
    if (b < 1) fail("blocks_per_stage", "each stage needs at least one block");
  if (prior_stages < 1 || prior_stages > 3) fail("prior_stages", "must be 1, 2 or 3");
  if (query_tokens < 1) fail("query_tokens", "must be at least 1");
  if (head_dim < 1) fail("head_dim", "must be positive");
  for (long i = 0; i < prior_stages; ++i) {
    const long c = stage_channels(i);
    if (c % head_dim != 0) {
      std::ostringstream s;
      s << "prior stage " << i << " has " << c << " channels, not a multiple of head_dim " << head_dim
        << ": attention needs channels = heads x head_dim";
      fail("head_dim", s.str());
    }
  }
  if (mlp_ratio < 1) fail("mlp_ratio", "must be at least 1");
  if (attention_blocks < 1) fail("attention_blocks", "must be at least 1");
  if (memory_bank_size < 1) fail("memory_bank_size", "must be at least 1");
  if (!(ema_momentum >= 0.0 && ema_momentum < 1.0)) fail("ema_momentum", "must be in [0, 1)");
  if (max_patch_size < 16 || max_patch_size % 16 != 0)
    fail("max_patch_size", "must be a positive multiple of 16 (four 2x poolings)");
  if (!(dropout >= 0.0 && dropout < 1.0)) fail("dropout", "must be in [0, 1)");
}

namespace {

// Each model.* key once: its name, how it is read and how it is written.
struct Key {
  const char* name;
  std::function<void(const ConfigMap&, const std::string&, ModelConfig&)> read;
  // "" leaves the key out of to_config.
  std::function<std::string(const ModelConfig&)> write;
};

Key field(const char* name, long ModelConfig::*f) {
  return {name, [f](const ConfigMap& m, const std::string& k, ModelConfig& c) { c.*f = config_int(m, k); },
          [f](const ModelConfig& c) { return std::to_string(c.*f); }};
}
Key field(const char* name, std::vector<long> ModelConfig::*f) {
  return {name, [f](const ConfigMap& m, const std::string& k, ModelConfig& c) { c.*f = config_int_list(m, k); },
          [f](const ModelConfig& c) { return format_int_list(c.*f); }};
}
Key field(const char* name, double ModelConfig::*f) {
  return {name, [f](const ConfigMap& m, const std::string& k, ModelConfig& c) { c.*f = config_double(m, k); },
          [f](const ModelConfig& c) { return format_exact_number(c.*f); }};
}
Key field(const char* name, bool ModelConfig::*f) {
  return {name, [f](const ConfigMap& m, const std::string& k, ModelConfig& c) { c.*f = config_bool(m, k); },
          [f](const ModelConfig& c) { return std::string(c.*f ? "true" : "false"); }};
}

const std::vector<Key>& keys() {
  static const std::vector<Key> table = [] {
    std::vector<Key> t{
        field("in_channels", &ModelConfig::in_channels),
        field("channels", &ModelConfig::channels),
        field("blocks_per_stage", &ModelConfig::blocks_per_stage),
        field("prior_stages", &ModelConfig::prior_stages),
        field("query_tokens", &ModelConfig::query_tokens),
        field("head_dim", &ModelConfig::head_dim),
        field("mlp_ratio", &ModelConfig::mlp_ratio),
        field("attention_blocks", &ModelConfig::attention_blocks),
        field("memory_bank_size", &ModelConfig::memory_bank_size),
        field("ema_momentum", &ModelConfig::ema_momentum),
        field("max_patch_size", &ModelConfig::max_patch_size),
        field("foreground_token_in_attention", &ModelConfig::foreground_token_in_attention),
        field("dropout", &ModelConfig::dropout),
    };
    // Written only when used, so that models without it keep their fingerprints.
    auto& dropout = t.back();
    dropout.write = [w = dropout.write](const ModelConfig& c) { return c.dropout > 0 ? w(c) : std::string(); };
    return t;
  }();
  return table;
}

}  // namespace

std::vector<std::string> ModelConfig::known_keys() {
  std::vector<std::string> names;
  for (const auto& k : keys()) names.push_back(k.name);
  names.push_back("preset");  // read first: the other keys go on top of it
  return names;
}

ConfigMap ModelConfig::to_config() const {
  ConfigMap m;
  for (const auto& k : keys()) {
    const std::string value = k.write(*this);
    if (!value.empty()) m.set(k.name, value);
  }
  return m;
}

ModelConfig ModelConfig::from_config(const ConfigMap& m) {
  reject_unknown_keys(m, known_keys(), "model");
  ModelConfig c = m.has("preset") ? preset(m.get("preset")) : ModelConfig{};
  for (const auto& k : keys())
    if (m.has(k.name)) k.read(m, k.name, c);
  c.validate();
  return c;
}

ModelConfig preset(const std::string& name) {
  ModelConfig c;
  if (name == "mass") return c;
  if (name == "paper") {
    c.foreground_token_in_attention = false;
    c.ema_momentum = 0.999;
    return c;
  }
  if (name == "tiny") {
    c.channels = {4, 8, 16, 16, 32};
    c.blocks_per_stage = {1, 1, 1, 1};
    c.head_dim = 8;
    c.query_tokens = 4;
    c.mlp_ratio = 2;
    c.attention_blocks = 1;
    c.memory_bank_size = 8;
    c.max_patch_size = 64;
    return c;
  }
  if (name == "small") {
    c.channels = {8, 16, 32, 64, 64};
    c.blocks_per_stage = {1, 1, 1, 1};
    c.head_dim = 16;
    c.query_tokens = 6;
    c.mlp_ratio = 2;
    c.memory_bank_size = 16;
    c.max_patch_size = 128;
    return c;
  }
  throw Error("model.preset", "unknown preset '" + name + "' (known: mass, paper, small, tiny)");
}

}  // namespace iris::model
