#pragma once
// A segmentation task distilled from reference pairs: per prior stage, K
// classes x T tokens x C. Encoded once, stored, and reused for any number of
// queries; tied to the model that made it by the model's fingerprint.
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace iris::model {

class IrisNetImpl;

struct TaskEmbedding {
  std::vector<at::Tensor> stages;    // [K, T, C_i], float32, CPU or device
  std::vector<long> labels;          // label value of each class in output maps
  std::vector<std::string> names;    // class names ("" when unknown)
  std::string model_fingerprint;     // fingerprint of the model that encoded it

  long num_classes() const { return stages.empty() ? 0 : stages[0].size(0); }
  TaskEmbedding to(const at::Device& device) const;
  // The classes at `indices`, in that order.
  TaskEmbedding select(const std::vector<long>& indices) const;

  // Context ensemble: the mean of several embeddings of the same classes.
  static TaskEmbedding mean(const std::vector<TaskEmbedding>& embeddings);
  // The classes of several embeddings of one model, one after the other.
  static TaskEmbedding concat(const std::vector<TaskEmbedding>& parts);

  // A safetensors file (common/tensor_file.h): tensors and text, never code.
  void save(const std::string& path) const;            // atomic
  static TaskEmbedding load(const std::string& path);  // iris::Error on any problem
  // A task file of iris' first format (a TorchScript archive, which can run
  // code while it is opened): only for iris-import --trust-legacy.
  static TaskEmbedding load_legacy(const std::string& path);
};

// Encodes reference image [1, C, D, H, W] with masks [1, K, D, H, W].
// Refuses empty masks (a class with no voxel has no foreground token).
TaskEmbedding encode_task(IrisNetImpl& net, const at::Tensor& reference, const at::Tensor& masks,
                          const std::string& model_fingerprint = "");
// Logits [B, K, D, H, W] for query [B, C, D, H, W]. All K classes share one
// decoder pass (their tokens attend to each other) unless classes_per_pass > 0:
// then the query is encoded once and decoded for that many classes at a time,
// which is how a model trained with few classes per episode sees many.
at::Tensor segment(IrisNetImpl& net, const at::Tensor& query, const TaskEmbedding& task, long classes_per_pass = 0);

}  // namespace iris::model
