#include "iris/model/model_config.h"

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

std::vector<std::string> ModelConfig::known_keys() {
  return {"in_channels", "channels", "blocks_per_stage", "prior_stages", "query_tokens",
          "head_dim", "mlp_ratio", "attention_blocks", "memory_bank_size", "ema_momentum",
          "max_patch_size", "foreground_token_in_attention", "dropout", "preset"};
}

ConfigMap ModelConfig::to_config() const {
  ConfigMap m;
  m.set("in_channels", std::to_string(in_channels));
  m.set("channels", format_int_list(channels));
  m.set("blocks_per_stage", format_int_list(blocks_per_stage));
  m.set("prior_stages", std::to_string(prior_stages));
  m.set("query_tokens", std::to_string(query_tokens));
  m.set("head_dim", std::to_string(head_dim));
  m.set("mlp_ratio", std::to_string(mlp_ratio));
  m.set("attention_blocks", std::to_string(attention_blocks));
  m.set("memory_bank_size", std::to_string(memory_bank_size));
  m.set("ema_momentum", format_exact_number(ema_momentum));
  m.set("max_patch_size", std::to_string(max_patch_size));
  m.set("foreground_token_in_attention", foreground_token_in_attention ? "true" : "false");
  // Written only when used, so that models without it keep their fingerprints.
  if (dropout > 0) m.set("dropout", format_exact_number(dropout));
  return m;
}

ModelConfig ModelConfig::from_config(const ConfigMap& m) {
  reject_unknown_keys(m, known_keys(), "model");
  ModelConfig c = m.has("preset") ? preset(m.get("preset")) : ModelConfig{};
  if (m.has("in_channels")) c.in_channels = config_int(m, "in_channels");
  if (m.has("channels")) c.channels = config_int_list(m, "channels");
  if (m.has("blocks_per_stage")) c.blocks_per_stage = config_int_list(m, "blocks_per_stage");
  if (m.has("prior_stages")) c.prior_stages = config_int(m, "prior_stages");
  if (m.has("query_tokens")) c.query_tokens = config_int(m, "query_tokens");
  if (m.has("head_dim")) c.head_dim = config_int(m, "head_dim");
  if (m.has("mlp_ratio")) c.mlp_ratio = config_int(m, "mlp_ratio");
  if (m.has("attention_blocks")) c.attention_blocks = config_int(m, "attention_blocks");
  if (m.has("memory_bank_size")) c.memory_bank_size = config_int(m, "memory_bank_size");
  if (m.has("ema_momentum")) c.ema_momentum = config_double(m, "ema_momentum");
  if (m.has("max_patch_size")) c.max_patch_size = config_int(m, "max_patch_size");
  if (m.has("foreground_token_in_attention"))
    c.foreground_token_in_attention = config_bool(m, "foreground_token_in_attention");
  if (m.has("dropout")) c.dropout = config_double(m, "dropout");
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
