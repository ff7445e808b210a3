#include "iris/model/task_embedding.h"

#include <set>
#include <torch/serialize.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/tensor_file.h"
#include "iris/model/iris_net.h"

namespace iris::model {

namespace {
const char* kFormatV2 = "iris-task-v2";

std::vector<std::string> split_lines(const std::string& s, size_t expected) {
  std::vector<std::string> out;
  size_t start = 0;
  while (out.size() + 1 < expected) {
    size_t nl = s.find('\n', start);
    if (nl == std::string::npos) break;
    out.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  if (expected > 0) out.push_back(s.substr(start));
  return out;
}
}  // namespace

TaskEmbedding TaskEmbedding::to(const at::Device& device) const {
  TaskEmbedding t = *this;
  for (auto& s : t.stages) s = s.to(device);
  return t;
}

TaskEmbedding TaskEmbedding::select(const std::vector<long>& indices) const {
  TaskEmbedding t;
  t.model_fingerprint = model_fingerprint;
  at::Tensor idx = at::tensor(std::vector<int64_t>(indices.begin(), indices.end()), at::kLong);
  for (const auto& s : stages) t.stages.push_back(s.index_select(0, idx.to(s.device())));
  for (long i : indices) {
    if (i < 0 || i >= num_classes()) throw Error("task embedding", "class index out of range");
    if (!labels.empty()) t.labels.push_back(labels[i]);
    if (!names.empty()) t.names.push_back(names[i]);
  }
  return t;
}

TaskEmbedding TaskEmbedding::mean(const std::vector<TaskEmbedding>& embeddings) {
  if (embeddings.empty()) throw Error("context ensemble", "needs at least one task embedding");
  TaskEmbedding result = embeddings[0];
  for (size_t e = 1; e < embeddings.size(); ++e) {
    const auto& other = embeddings[e];
    if (other.model_fingerprint != result.model_fingerprint)
      throw Error("context ensemble", "embeddings come from different models");
    if (other.stages.size() != result.stages.size() || other.num_classes() != result.num_classes())
      throw Error("context ensemble", "embeddings have different class counts or stages");
  }
  for (size_t i = 0; i < result.stages.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (const auto& e : embeddings) parts.push_back(e.stages[i]);
    result.stages[i] = at::stack(parts).mean(0);
  }
  return result;
}

TaskEmbedding TaskEmbedding::concat(const std::vector<TaskEmbedding>& parts) {
  if (parts.empty()) throw Error("task embedding", "nothing to concatenate");
  TaskEmbedding result = parts[0];
  for (size_t p = 1; p < parts.size(); ++p) {
    const auto& other = parts[p];
    if (other.model_fingerprint != result.model_fingerprint)
      throw Error("task embedding", "parts come from different models");
    if (other.stages.size() != result.stages.size()) throw Error("task embedding", "parts have different stages");
    for (size_t i = 0; i < result.stages.size(); ++i) result.stages[i] = at::cat({result.stages[i], other.stages[i]}, 0);
    result.labels.insert(result.labels.end(), other.labels.begin(), other.labels.end());
    result.names.insert(result.names.end(), other.names.begin(), other.names.end());
  }
  return result;
}

void TaskEmbedding::save(const std::string& path) const {
  TensorFile file(kFormatV2);
  file.set("model_fingerprint", model_fingerprint);
  file.set_int("num_stages", static_cast<int64_t>(stages.size()));
  file.set_strings("names", names);
  file.put("labels", at::tensor(std::vector<int64_t>(labels.begin(), labels.end()), at::kLong));
  for (size_t i = 0; i < stages.size(); ++i) file.put("stage" + std::to_string(i), stages[i].to(at::kFloat));
  file.save(path);
}

namespace {

// A task's output values: each a label map can hold (1..65535) and each
// once. A wrapped or repeated value would write one class over another.
void check_task_labels(const std::vector<long>& labels, const std::string& path) {
  std::set<long> seen;
  for (long v : labels) {
    if (v < 1 || v > 65535)
      throw Error(path, "is damaged: it gives a class the label value " + std::to_string(v) + " (labels are 1 to 65535)");
    if (!seen.insert(v).second) throw Error(path, "is damaged: the label value " + std::to_string(v) + " is given twice");
  }
}

}  // namespace

TaskEmbedding TaskEmbedding::load(const std::string& path) {
  const TensorFile file = TensorFile::load(path, kFormatV2, "iris task file");
  TaskEmbedding t;
  t.model_fingerprint = file.meta("model_fingerprint");
  const long n = file.meta_int("num_stages", 1, 8);
  for (long i = 0; i < n; ++i) {
    const at::Tensor& s = file.get("stage" + std::to_string(i));
    if (s.scalar_type() != at::kFloat || s.dim() != 3 || (i > 0 && s.size(0) != t.stages[0].size(0)))
      throw Error(path, "is damaged: stage " + std::to_string(i) + " is not a [classes, tokens, channels] float tensor");
    t.stages.push_back(s);
  }
  const long K = t.num_classes();
  const at::Tensor& labels = file.get("labels", at::kLong, {K});
  for (long i = 0; i < K; ++i) t.labels.push_back(labels[i].item<int64_t>());
  check_task_labels(t.labels, path);
  t.names = file.meta_strings("names", static_cast<size_t>(K));
  if (!t.names.empty() && static_cast<long>(t.names.size()) != K)
    throw Error(path, "is damaged: it names " + std::to_string(t.names.size()) + " of its " + std::to_string(K) +
                          " classes");
  if (file.tensors().size() != static_cast<size_t>(n + 1))
    throw Error(path, "is damaged or was edited: it holds tensors a task file does not have");
  return t;
}

TaskEmbedding TaskEmbedding::load_legacy(const std::string& path) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw Error(path, "is not a readable task file of iris' first format");
  }
  c10::IValue v;
  if (!archive.try_read("format", v) || !v.isString() || v.toStringRef() != "iris-task-embedding-v1")
    throw Error(path, "is not an iris task file of the first format (format tag missing or different)");
  TaskEmbedding t;
  archive.read("model_fingerprint", v);
  t.model_fingerprint = v.toStringRef();
  archive.read("num_stages", v);
  const long n = v.toInt();
  if (n < 1 || n > 8) throw Error(path, "is damaged: " + std::to_string(n) + " stages");
  at::Tensor labels;
  archive.read("labels", labels);
  for (long i = 0; i < labels.numel(); ++i) t.labels.push_back(labels[i].item<long>());
  check_task_labels(t.labels, path);
  archive.read("num_names", v);
  const long num_names = v.toInt();
  if (num_names < 0 || num_names > labels.numel()) throw Error(path, "is damaged: its class names do not match its labels");
  archive.read("names", v);
  t.names = split_lines(v.toStringRef(), static_cast<size_t>(num_names));
  for (long i = 0; i < n; ++i) {
    at::Tensor s;
    archive.read("stage" + std::to_string(i), s);
    t.stages.push_back(s);
  }
  return t;
}

TaskEmbedding encode_task(IrisNetImpl& net, const at::Tensor& reference, const at::Tensor& masks,
                          const std::string& fingerprint) {
  if (masks.dim() != 5 || masks.size(0) != reference.size(0))
    throw Error("reference mask", "expected [batch, classes, D, H, W] matching the reference image");
  const at::Tensor voxels = masks.sum({2, 3, 4});
  for (long b = 0; b < voxels.size(0); ++b)
    for (long k = 0; k < voxels.size(1); ++k)
      if (voxels[b][k].item<double>() <= 0)
        throw Error("reference mask", "class #" + std::to_string(k + 1) + " of reference " + std::to_string(b + 1) +
                                       " has no voxels: each class must appear in every reference");
  auto tokens = net.encode_task_tokens(net.encode_image(reference), masks);
  TaskEmbedding t;
  t.model_fingerprint = fingerprint;
  // Several reference pairs in one batch: their mean (context ensemble).
  for (auto& s : tokens) t.stages.push_back(s.mean(0).to(at::kFloat));
  for (long k = 0; k < masks.size(1); ++k) t.labels.push_back(k + 1);
  return t;
}

at::Tensor segment(IrisNetImpl& net, const at::Tensor& query, const TaskEmbedding& task, long classes_per_pass) {
  const long K = task.num_classes();
  if (K == 0) throw Error("task embedding", "has no classes");
  const auto features = net.encode_image(query);
  const long step = classes_per_pass > 0 ? std::min(classes_per_pass, K) : K;
  std::vector<at::Tensor> logits;
  for (long first = 0; first < K; first += step) {
    std::vector<at::Tensor> tokens;
    for (const auto& s : task.stages) tokens.push_back(s.narrow(0, first, std::min(step, K - first)).to(query.device()));
    logits.push_back(net.decode(features, tokens));
  }
  return logits.size() == 1 ? logits[0] : at::cat(logits, 1);
}

}  // namespace iris::model
