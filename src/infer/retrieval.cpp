#include "iris/infer/retrieval.h"

#include <algorithm>
#include <filesystem>

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/tensor_file.h"
#include "iris/io/intensity.h"
#include "iris/infer/reference.h"
#include "iris/model/iris_net.h"

namespace iris::infer {

namespace fs = std::filesystem;

namespace {

const char* kFeaturesFormat = "iris-image-features-v2";

double cosine(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kDouble).reshape({-1}), y = b.to(at::kDouble).reshape({-1});
  if (x.numel() != y.numel()) throw Error("retrieval", "embeddings of different sizes cannot be compared");
  const double denominator = (x.norm() * y.norm()).item<double>();
  return denominator > 0 ? (x * y).sum().item<double>() / denominator : 0.0;
}

at::Tensor class_vector(const model::TaskEmbedding& t, long k, EmbeddingSimilarity similarity) {
  std::vector<at::Tensor> parts;
  for (const auto& stage : t.stages) {
    at::Tensor tokens = stage[k].to(at::kCPU);  // [T, C]
    parts.push_back(similarity == EmbeddingSimilarity::foreground_token ? tokens[tokens.size(0) - 1]
                                                                          : tokens.reshape({-1}));
  }
  return at::cat(parts);
}

long class_index_of(const model::TaskEmbedding& t, long label) {
  const auto it = std::find(t.labels.begin(), t.labels.end(), label);
  return it == t.labels.end() ? -1 : static_cast<long>(it - t.labels.begin());
}

}  // namespace

void EmbeddingPool::save(const std::string& folder) const {
  fs::create_directories(folder);
  for (const auto& e : entries) {
    if (e.name.empty() || e.name.find('/') != std::string::npos)
      throw Error(folder, "pool entry names must be plain, non-empty file names");
    const std::string stem = (fs::path(folder) / e.name).string();
    e.task.save(stem + ".task");
    if (!e.image_features.defined()) continue;
    TensorFile file(kFeaturesFormat);
    file.set("model_fingerprint", e.task.model_fingerprint);
    file.put("features", e.image_features.to(at::kFloat));
    file.save(stem + ".features");
  }
}

EmbeddingPool EmbeddingPool::load(const std::string& folder, const std::string& model_fingerprint) {
  if (!fs::is_directory(folder)) throw Error(folder, "pool folder does not exist");
  std::vector<fs::path> task_files;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.is_regular_file() && e.path().extension() == ".task") task_files.push_back(e.path());
  std::sort(task_files.begin(), task_files.end());
  if (task_files.empty()) throw Error(folder, "pool folder holds no .task file (make one with iris-infer pool)");
  EmbeddingPool pool;
  for (const auto& path : task_files) {
    PoolEntry entry;
    entry.name = path.stem().string();
    entry.task = model::TaskEmbedding::load(path.string());
    if (!model_fingerprint.empty() && entry.task.model_fingerprint != model_fingerprint)
      throw Error(path.string(), "pool entry was made by another model (fingerprint " + entry.task.model_fingerprint +
                                     ", this model " + model_fingerprint + ")");
    fs::path features_path = path;
    features_path.replace_extension(".features");
    if (fs::exists(features_path)) {
      const TensorFile file = TensorFile::load(features_path.string(), kFeaturesFormat, "iris image feature file");
      if (file.meta("model_fingerprint") != entry.task.model_fingerprint)
        throw Error(features_path.string(), "belongs to another model than " + path.string());
      const at::Tensor& features = file.get("features");
      if (features.scalar_type() != at::kFloat || features.dim() != 1)
        throw Error(features_path.string(), "is damaged: its features are not a float vector");
      entry.image_features = features;
    }
    pool.entries.push_back(std::move(entry));
  }
  return pool;
}

at::Tensor image_feature_vector(model::IrisNetImpl& net, const at::Tensor& volume, long window,
                                const c10::Device& device) {
  if (volume.dim() != 3) throw Error("image features", "expected a 3-D volume");
  const std::array<long, 3> size{volume.size(0), volume.size(1), volume.size(2)};
  const auto win = window_shape(size, window);
  at::Tensor padded = pad_to(volume.to(at::kFloat), win);
  torch::NoGradGuard no_grad;
  using torch::indexing::Slice;
  at::Tensor sum;
  long count = 0;
  for (long z : window_starts(padded.size(0), win[0], 0.0))
    for (long y : window_starts(padded.size(1), win[1], 0.0))
      for (long x : window_starts(padded.size(2), win[2], 0.0)) {
        at::Tensor w = padded.index({Slice(z, z + win[0]), Slice(y, y + win[1]), Slice(x, x + win[2])});
        at::Tensor deepest = net.encode_image(w.unsqueeze(0).unsqueeze(0).to(device))[0];  // [1, C, d, h, w]
        at::Tensor v = deepest.mean({2, 3, 4})[0].to(at::kCPU, at::kFloat);
        sum = sum.defined() ? sum + v : v;
        ++count;
      }
  return sum / static_cast<double>(count);
}

PoolEntry encode_pool_entry(model::IrisNetImpl& net, const Image& image, const Image& labels,
                            const std::vector<long>& label_values, const std::string& intensity,
                            const c10::Device& device, const std::string& fingerprint, long classes_per_window) {
  PoolEntry entry;
  entry.name = fs::path(image.source).filename().string();
  entry.task = encode_reference(net, image, labels, label_values, intensity, device, fingerprint, classes_per_window);
  entry.image_features = image_feature_vector(net, io::normalise_intensity(image.voxels, intensity),
                                              net.config().max_patch_size, device);
  return entry;
}

double class_similarity(const model::TaskEmbedding& a, long class_a, const model::TaskEmbedding& b, long class_b,
                        EmbeddingSimilarity similarity) {
  if (a.stages.size() != b.stages.size()) throw Error("retrieval", "embeddings have different numbers of stages");
  return cosine(class_vector(a, class_a, similarity), class_vector(b, class_b, similarity));
}

RetrievalResult pick_nearest_embeddings(const model::TaskEmbedding& query, const std::vector<bool>& has_query_class,
                                        const model::TaskEmbedding& fallback, const EmbeddingPool& pool,
                                        EmbeddingSimilarity similarity) {
  const long K = fallback.num_classes();
  if (static_cast<long>(has_query_class.size()) != K || (query.num_classes() != K && query.num_classes() != 0))
    throw Error("retrieval", "query embedding and initial task differ in their classes");
  RetrievalResult result;
  result.task = fallback.to(c10::Device(c10::kCPU));
  result.chosen_entry.assign(K, -1);
  result.similarity.assign(K, 0.0);
  for (long k = 0; k < K; ++k) {
    if (!has_query_class[k]) continue;
    double best = -2.0;
    long best_entry = -1, best_class = -1;
    for (size_t e = 0; e < pool.entries.size(); ++e) {
      const auto& task = pool.entries[e].task;
      const long c = class_index_of(task, fallback.labels[k]);
      if (c < 0) continue;
      const double s = class_similarity(query, k, task, c, similarity);
      if (s > best) {
        best = s;
        best_entry = static_cast<long>(e);
        best_class = c;
      }
    }
    if (best_entry < 0) continue;
    const auto& chosen = pool.entries[best_entry].task;
    for (size_t s = 0; s < result.task.stages.size(); ++s) {
      result.task.stages[s] = result.task.stages[s].clone();
      result.task.stages[s][k].copy_(chosen.stages[s][best_class].to(at::kCPU));
    }
    result.chosen_entry[k] = best_entry;
    result.similarity[k] = best;
  }
  return result;
}

RetrievalResult object_level_retrieval(model::IrisNetImpl& net, const at::Tensor& volume,
                                       const model::TaskEmbedding& initial, const EmbeddingPool& pool,
                                       const RetrievalOptions& options) {
  const long K = initial.num_classes();
  at::Tensor probabilities = sliding_window_probabilities(net, volume, initial, options.window);
  at::Tensor initial_masks = probabilities.ge(options.threshold).to(at::kFloat);  // [K, Z, Y, X]
  std::vector<bool> has_class(K, false);
  std::vector<long> present;
  for (long k = 0; k < K; ++k)
    if (initial_masks[k].sum().item<double>() > 0) {
      has_class[k] = true;
      present.push_back(k);
    }
  // The query's own embedding of each class found; the rest stays zero and unused.
  model::TaskEmbedding query = initial.to(c10::Device(c10::kCPU));
  for (auto& s : query.stages) s = at::zeros_like(s);
  auto encode_classes = [&](const std::vector<long>& classes) {
    at::Tensor index = at::tensor(std::vector<int64_t>(classes.begin(), classes.end()), at::kLong);
    const model::TaskEmbedding own = encode_masks(net, volume, initial_masks.index_select(0, index),
                                                  options.window.device, initial.model_fingerprint);
    for (size_t s = 0; s < query.stages.size(); ++s) query.stages[s].index_copy_(0, index, own.stages[s]);
  };
  try {
    if (!present.empty()) encode_classes(present);
  } catch (const Error&) {
    // A scattered initial mask wider than the window can leave its window
    // empty: such a class keeps the initial embedding, the others go on.
    for (long k : present) try {
        encode_classes({k});
      } catch (const Error&) {
        has_class[k] = false;
      }
  }
  return pick_nearest_embeddings(query, has_class, initial, pool, options.similarity);
}

long nearest_image(const at::Tensor& query_features, const EmbeddingPool& pool, double* similarity_out) {
  double best = -2.0;
  long best_entry = -1;
  for (size_t e = 0; e < pool.entries.size(); ++e) {
    if (!pool.entries[e].image_features.defined()) continue;
    const double s = cosine(query_features, pool.entries[e].image_features);
    if (s > best) {
      best = s;
      best_entry = static_cast<long>(e);
    }
  }
  if (best_entry < 0) throw SettingError("pool_dir", "no pool entry has image features (.features files next to its .task files)");
  if (similarity_out) *similarity_out = best;
  return best_entry;
}

}  // namespace iris::infer
