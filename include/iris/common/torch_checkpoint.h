#pragma once
// Reads the tensors of a checkpoint written by Python's torch.save (zip format,
// torch >= 1.6), without Python. LibTorch's own pickle_load cannot read these
// (it rejects OrderedDict state and SETITEM on it), so the pickle inside is
// interpreted here by a small machine that knows only what torch.save emits.
// Any other Python global in the pickle is refused with an iris::Error: a
// checkpoint can never make this reader run code.
#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace iris {

struct TorchCheckpoint {
  // Every tensor of the state dict, in file order. Keys keep their names, less
  // a leading "module." (added by DistributedDataParallel). Tensors are CPU
  // views of the file's storages: two keys that shared a storage in Python
  // share it here too.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  // The entry the state dict came from ("model", "ema_model", ...), or "" when
  // the file holds a bare state dict.
  std::string source_key;
};

// The entries tried, in order, when the file is a training checkpoint (a dict
// holding the state dict next to optimizer state, epoch, ...).
extern const std::vector<std::string> kTorchCheckpointStateDictKeys;

// Reads `path`. When the top-level dict has one of kTorchCheckpointStateDictKeys
// (or `prefer`, tried first when not empty) whose value is a dict, the tensors
// come from that entry; otherwise the top-level dict is the state dict. Values
// that are not tensors (epoch, optimizer hyper-parameters, config) are parsed
// and ignored. Throws iris::Error naming `path` when the file is not a zip
// torch.save file, is damaged, names a Python global outside the allowed set,
// `prefer` is given but absent, or it holds no tensor.
TorchCheckpoint read_torch_checkpoint(const std::string& path, const std::string& prefer = "");

}  // namespace iris
