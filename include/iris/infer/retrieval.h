#pragma once
// Retrieval strategies: choose, from a pool of encoded references, the task
// embedding that suits a query best.
//  - Object-level (the paper's): segment the query with an initial reference,
//    encode the query's own per-class embedding from that initial mask, and
//    take per class the pool embedding with the highest cosine similarity.
//  - Image-level (baseline): take the whole reference whose image features
//    (global average of the deepest encoder map) are nearest the query's.
#include <string>
#include <vector>

#include <ATen/Tensor.h>

#include "iris/infer/sliding_window.h"
#include "iris/common/image.h"
#include "iris/model/task_embedding.h"

namespace iris::infer {

// One encoded reference in a pool.
struct PoolEntry {
  std::string name;            // file stem in a stored pool, else the reference's file name
  model::TaskEmbedding task;   // classes identified by task.labels
  at::Tensor image_features;   // [C] (deepest encoder width); undefined when unknown
};

// A pool of references. Stored as a folder holding <name>.task (a
// TaskEmbedding file, usable on its own with --task) and <name>.features (the
// image feature vector) per entry.
struct EmbeddingPool {
  std::vector<PoolEntry> entries;

  void save(const std::string& folder) const;  // creates the folder; one file pair per entry
  // Every *.task of the folder, in name order. iris::Error when the folder has
  // none or an entry was made by another model (fingerprint != model_fingerprint,
  // when that is not empty). A missing .features file leaves image_features undefined.
  static EmbeddingPool load(const std::string& folder, const std::string& model_fingerprint = "");
};

// Image features of a normalised volume [Z, Y, X]: the deepest encoder map
// averaged over space, averaged over the non-overlapping windows (of at most
// `window`) that tile the volume. [C], float, CPU.
at::Tensor image_feature_vector(model::IrisNetImpl& net, const at::Tensor& volume, long window,
                                const c10::Device& device);

// encode_reference plus the image features of the reference.
PoolEntry encode_pool_entry(model::IrisNetImpl& net, const Image& image, const Image& labels,
                            const std::vector<long>& label_values, const std::string& intensity,
                            const c10::Device& device, const std::string& model_fingerprint,
                            long classes_per_window = 0);

// What a class embedding is compared by. all_tokens (default): the tokens of
// every prior stage, flattened and concatenated, so the learned query tokens
// (which summarise the object's context) count as well as its mean feature.
// foreground_token: only the foreground token of each stage (the masked
// average of the reference features, the last token), the most direct
// appearance descriptor.
enum class EmbeddingSimilarity { all_tokens, foreground_token };

// Cosine similarity of class `class_a` of `a` and class `class_b` of `b`.
double class_similarity(const model::TaskEmbedding& a, long class_a, const model::TaskEmbedding& b, long class_b,
                        EmbeddingSimilarity similarity = EmbeddingSimilarity::all_tokens);

struct RetrievalResult {
  model::TaskEmbedding task;       // the classes of the initial task, retrieved embeddings
  std::vector<long> chosen_entry;  // per class: pool index, or -1 = kept the initial embedding
  std::vector<double> similarity;  // per class: cosine similarity of the chosen entry (0 for -1)
};

// Per class k of `query` (an embedding of the query itself, same classes and
// order as `fallback`) with has_query_class[k]: the pool entry holding the
// same label value whose embedding is most similar. Classes without a query
// embedding, or that no entry holds, keep the fallback's embedding.
RetrievalResult pick_nearest_embeddings(const model::TaskEmbedding& query, const std::vector<bool>& has_query_class,
                                        const model::TaskEmbedding& fallback, const EmbeddingPool& pool,
                                        EmbeddingSimilarity similarity = EmbeddingSimilarity::all_tokens);

struct RetrievalOptions {
  SlidingWindowOptions window;  // for the initial segmentation
  double threshold = 0.5;       // initial mask = probability >= threshold
  EmbeddingSimilarity similarity = EmbeddingSimilarity::all_tokens;
};

// Object-level retrieval for a normalised query volume [Z, Y, X]: initial
// segmentation with `initial`, query embeddings from the initial masks (a
// class with an empty initial mask keeps `initial`'s embedding), then
// pick_nearest_embeddings. Segment the query again with result.task.
RetrievalResult object_level_retrieval(model::IrisNetImpl& net, const at::Tensor& volume,
                                       const model::TaskEmbedding& initial, const EmbeddingPool& pool,
                                       const RetrievalOptions& options);

// Image-level retrieval: index of the entry whose image features have the
// highest cosine similarity with `query_features`; entries without features
// are skipped (iris::Error when none has them). `similarity_out` gets the value.
long nearest_image(const at::Tensor& query_features, const EmbeddingPool& pool, double* similarity_out = nullptr);

}  // namespace iris::infer
