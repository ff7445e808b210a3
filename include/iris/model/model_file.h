#pragma once
// The self-describing iris model file (.iris): weights, architecture config,
// memory-bank class names, preprocessing and a fingerprint in one safetensors
// file (common/tensor_file.h), so no other flag is needed to load it and
// loading it never runs code.
#include <optional>
#include <string>
#include <vector>

#include "iris/model/iris_net.h"
#include "iris/model/losses.h"
#include "iris/model/task_embedding.h"

namespace iris::model {

struct IrisModel {
  ModelConfig config;
  IrisNet net{nullptr};
  // Names of memory-bank entries (index = class id); may be shorter than the bank.
  std::vector<std::string> class_names;
  std::string fingerprint;
  std::string description;  // free text: where the weights came from
  // Preprocessing the network was trained with (io::PreprocessConfig keys as
  // "key: value" text); empty = feed voxels unchanged.
  std::string preprocess;
  // Axes ("x", "xz", ...) along which training mirrored its queries
  // (train.augment_mirror): iris-infer --tta flips only along these; empty =
  // no mirroring learnt, --tta is refused.
  std::string mirror_axes;
  // The loss the network was trained with (train.loss, dice_weight,
  // bce_weight): in-context tuning optimises the same unless told otherwise
  // (iris-infer --tune-loss). An import of the author's checkpoint records
  // their adaptive Tversky + BCE, 1:1. Unset in files written before it was
  // recorded and in converted first-format files; tuning then uses soft
  // Dice + BCE, 1:1.
  std::optional<LossWeights> loss;
  // Skull stripping as the first preprocessing step (optional): a one-class
  // brain task of this network (iris-infer encode of a head MR and its brain
  // mask). Inference with the model's preprocessing first segments the brain
  // with it, on the unstripped image, and sets the image to 0 outside it
  // (infer/segmenter.h). Stored as tensors "skull_strip/stage{i}"; it does
  // not enter the fingerprint, so tasks encoded before it was attached stay
  // valid for the weights (not for the inputs they were encoded from).
  std::optional<TaskEmbedding> skull_strip;
};

// Sets (or, with std::nullopt, removes) the model's skull-strip step.
// iris::Error naming `where` (the task file) unless the task has exactly one
// class and was encoded by this model (fingerprint).
void set_skull_strip(IrisModel& model, std::optional<TaskEmbedding> brain, const std::string& where);

// Fingerprint of a network's weights and architecture (64-bit hash, hex).
std::string compute_fingerprint(const IrisNetImpl& net);

// Writes atomically; computes and stores the fingerprint (and sets model.fingerprint).
void save_model(IrisModel& model, const std::string& path);
// Loads onto the CPU; throws iris::Error naming the file on any problem:
// damaged bytes (checksum), weights that disagree with the stored
// fingerprint, tensors the architecture does not have, a file of the first
// format (the message says how to convert it).
IrisModel load_model(const std::string& path);
// Reads a model file of iris' first format (a TorchScript archive, which can
// run code while it is opened): only for iris-import --trust-legacy.
IrisModel load_legacy_model(const std::string& path);

// Class id of a memory-bank class name; iris::Error listing the names if unknown.
long class_id(const IrisModel& model, const std::string& name);

}  // namespace iris::model
