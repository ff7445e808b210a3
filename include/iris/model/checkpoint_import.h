#pragma once
// Import of the author's reference checkpoints (Stanford-AIMI/MASS, written
// by Python's torch.save) into an iris model.
#include <optional>
#include <string>

#include "iris/common/config_map.h"
#include "iris/model/model_file.h"

namespace iris::model {

// Architecture read off a MASS state dict: widths, blocks per stage, prior
// stages, query tokens, attention blocks, MLP ratio, memory-bank size and
// positional-embedding size from key names and tensor shapes. (The head
// width is not visible in the weights; MASS uses 32.)
ModelConfig infer_config_from_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                         const std::string& source);

// The architecture iris-import builds for `checkpoint`: everything its
// tensors show (infer_config_from_state_dict), with the keys of `given` (a
// config's model: keys and --set) on top; a given key never discards the
// others. head_dim is not in any shape, so `given` must hold it: iris::Error
// asking for it otherwise (no silent guess).
ModelConfig import_config(const std::string& checkpoint, const ConfigMap& given, const std::string& prefer_key = "");

struct ImportReport {
  std::string source_key;  // where the state dict sat ("" = bare, "model", "ema_model", ...)
  long tensors = 0;
};

// Reads `checkpoint` (see read_torch_checkpoint), builds the network from
// `config` or from the inferred architecture, and copies every tensor.
// Missing keys, unexpected keys and shape mismatches are all listed in one
// iris::Error.
IrisModel import_mass_checkpoint(const std::string& checkpoint, const std::optional<ModelConfig>& config,
                                 ImportReport* report = nullptr, const std::string& prefer_key = "");

}  // namespace iris::model
