#pragma once
// Architecture of an IRIS network. A plain struct: the model knows tensors,
// not files; turning YAML or CLI text into this struct happens in from_config.
#include <string>
#include <vector>

#include "iris/common/config_map.h"

namespace iris::model {

struct ModelConfig {
  long in_channels = 1;
  // Encoder widths of the stem and the four downsampling stages.
  std::vector<long> channels{32, 64, 128, 256, 512};
  // Residual blocks per downsampling stage (and per matching decoder stage).
  std::vector<long> blocks_per_stage{2, 2, 2, 2};
  // Deepest stages that get task encoding and fusion (1..3).
  long prior_stages = 3;
  // Learnable query tokens per class; each task embedding has this + 1 tokens.
  long query_tokens = 10;
  // Attention head width; heads = channels / head_dim (the author uses 32).
  long head_dim = 32;
  long mlp_ratio = 4;
  long attention_blocks = 2;     // blocks in each task encoder and fusion layer
  long memory_bank_size = 72;    // classes the memory bank can hold
  double ema_momentum = 0.99;    // memory-bank EMA (paper: 0.999)
  long max_patch_size = 128;     // positional embedding size per axis
  // The author's code feeds the foreground token through the attention with
  // the queries; the paper keeps it outside. true = author's behaviour.
  bool foreground_token_in_attention = true;
  // Channel dropout on the decoder's full-resolution features before the
  // head, in training only (the seed's stage-3 "dropout 0.2"); a model
  // trained with it runs unchanged at inference. Not part of the
  // architecture: it changes no weight, and init_from ignores it.
  double dropout = 0.0;

  long tokens_per_class() const { return query_tokens + 1; }
  // Width of prior stage i (0 = deepest).
  long stage_channels(long i) const { return channels[4 - i]; }
  // Upsampling factor of prior stage i back to full resolution.
  long stage_scale(long i) const { return 1L << (4 - i); }
  // Sum of prior-stage widths: the width of the head's input token.
  long head_input_dim() const;

  // Throws iris::Error naming the problem (impossible channel/head combination, ...).
  void validate() const;

  ConfigMap to_config() const;
  // Reads known keys from `m` (missing keys keep their defaults) and rejects
  // unknown ones with a suggestion.
  static ModelConfig from_config(const ConfigMap& m);
  static std::vector<std::string> known_keys();
};

// The presets shipped in configs/model/: "mass" (the author's), "paper" (the
// paper's description), "small" (the demo model) and "tiny" (tests).
ModelConfig preset(const std::string& name);

}  // namespace iris::model
