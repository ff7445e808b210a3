// Segmenter: where the task comes from (segmenter_state.h). The strategies:
//   one-shot, ensemble  reference pairs encoded (several: their mean), or a
//                       stored task (--task);
//   memory-bank         the model's learned class tokens (--classes);
//   tuning              the task embedding optimised on the reference pairs;
//   retrieval           per query and per class, the pool entry whose output
//                       agrees best (object-level retrieval);
//   image-retrieval     per query, the pool entry with the nearest image
//                       features.
// Each member of a model ensemble builds its own task the same way.
#include <algorithm>
#include <random>
#include <sstream>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/setting_error.h"
#include "iris/common/file_names.h"
#include "iris/io/image_io.h"
#include "iris/io/intensity.h"
#include "iris/io/label_ops.h"
#include "iris/infer/reference.h"
#include "segmenter_state.h"

namespace iris::infer {

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names{"one-shot", "ensemble", "memory-bank", "retrieval", "image-retrieval",
                                              "tuning"};
  return names;
}

model::TaskEmbedding Segmenter::State::load_task(const Member& member) const {
  model::TaskEmbedding t = spec.task ? *spec.task : model::TaskEmbedding::load(spec.task_file);
  if (t.model_fingerprint != member.model.fingerprint)
    throw Error(spec.task ? std::string("task") : spec.task_file,
                "task embedding was made by another model (fingerprint " + t.model_fingerprint + ", this model " +
                    member.model.fingerprint + "); encode it again with this model");
  return t;
}

model::TaskEmbedding Segmenter::State::encode_one(Member& member, const ReferencePair& pair) {
  const auto t = Clock::now();
  auto encoded = encode_reference(*member.model.net, pair.image, pair.mask, labels, intensity, options.device,
                                  member.model.fingerprint, options.classes_per_pass);
  timings.add("encode", t);
  return encoded;
}

model::TaskEmbedding Segmenter::State::encode_references(Member& member) {
  std::vector<model::TaskEmbedding> tasks;
  for (size_t i = 0; i < spec.references.size(); ++i) tasks.push_back(encode_one(member, read_reference(i)));
  return model::TaskEmbedding::mean(tasks);
}

void Segmenter::State::add_references_to_pool(Member& member) {
  for (size_t i = 0; i < spec.references.size(); ++i) {
    ReferencePair pair = read_reference(i);
    const auto t = Clock::now();
    member.pool.entries.push_back(encode_pool_entry(*member.model.net, pair.image, pair.mask, labels, intensity,
                                                    options.device, member.model.fingerprint, options.classes_per_pass));
    timings.add("encode", t);
    std::string name = case_name(spec.references[i]);
    for (const auto& e : member.pool.entries)
      if (&e != &member.pool.entries.back() && e.name == name) name += "_" + std::to_string(i);
    member.pool.entries.back().name = name;
  }
}

void Segmenter::State::choose_strategy() {
  strategy = spec.strategy;
  if (strategy.empty()) {
    if (!spec.classes.empty()) strategy = "memory-bank";
    else if (!spec.pool_dir.empty()) strategy = "retrieval";
    else if (spec.references.size() > 1) strategy = "ensemble";
    else strategy = "one-shot";
  }
  const auto& known = strategy_names();
  if (std::find(known.begin(), known.end(), strategy) == known.end())
    throw SettingError("strategy", "unknown strategy '" + strategy + "'");
  const bool retrieval = strategy == "retrieval" || strategy == "image-retrieval";
  if (spec.references.size() != spec.reference_masks.size())
    throw SettingError("reference_masks", "give one " + setting_ref("reference_masks") + " per " + setting_ref("references") + " (" +
                                              std::to_string(spec.references.size()) + " images, " +
                                              std::to_string(spec.reference_masks.size()) + " masks)");
  if (strategy == "memory-bank") {
    if (spec.classes.empty()) throw SettingError("strategy", "memory-bank needs " + setting_ref("classes"));
    if (!spec.references.empty() || stored_task() || !spec.pool_dir.empty())
      throw SettingError("strategy", "memory-bank takes its task from " + setting_ref("classes") + " only");
  } else if (!spec.classes.empty()) {
    throw SettingError("classes", "only with " + setting_ref("strategy") + " memory-bank");
  }
  if (strategy == "one-shot" || strategy == "ensemble") {
    if (!spec.task_file.empty() && spec.task) throw SettingError("task_file", "give one stored task");
    if ((!spec.references.empty()) + stored_task() != 1)
      throw SettingError("references", "give exactly one task source: " + setting_ref("references") + "/" + setting_ref("reference_masks") + " or " + setting_ref("task_file"));
    if (strategy == "one-shot" && spec.references.size() > 1)
      throw SettingError("strategy", "one-shot takes one reference (several make a context ensemble: " + setting_ref("strategy") + " ensemble)");
  }
  if (retrieval && spec.references.empty() && spec.pool_dir.empty())
    throw SettingError("strategy", strategy + " needs " + setting_ref("pool_dir") + " and/or reference pairs to choose from");
  if (strategy == "tuning" && spec.references.empty())
    throw SettingError("strategy", "tuning needs labelled examples: " + setting_ref("references") + "/" + setting_ref("reference_masks"));
  if (!spec.pool_dir.empty() && !retrieval) throw SettingError("pool_dir", "only with " + setting_ref("strategy") + " retrieval or image-retrieval");
  if (!spec.tuned_task_out.empty() && strategy != "tuning") throw SettingError("tuned_task_out", "only with " + setting_ref("strategy") + " tuning");
  if (spec.tune_loss && strategy != "tuning") throw SettingError("tune_loss", "only with " + setting_ref("strategy") + " tuning");
}

void Segmenter::State::build_task(Member& member) {
  if (strategy == "memory-bank") build_memory_bank_task(member);
  else if (strategy == "one-shot" || strategy == "ensemble")
    member.task = stored_task() ? load_task(member) : encode_references(member);
  else if (strategy == "tuning") build_tuned_task(member);
  else build_retrieval_task(member);  // retrieval, image-retrieval
}

void Segmenter::State::build_memory_bank_task(Member& member) {
  std::vector<int64_t> ids;
  for (const auto& n : spec.classes) ids.push_back(model::class_id(member.model, n));
  member.task.stages = member.model.net->memory_bank_tokens(at::tensor(ids, at::kLong));
  for (auto& s : member.task.stages) s = s.to(at::kCPU);
  member.task.names = spec.classes;
  for (size_t i = 0; i < ids.size(); ++i) member.task.labels.push_back(static_cast<long>(i) + 1);
  member.task.model_fingerprint = member.model.fingerprint;
}

// Examples are the reference pairs; the start is --task or their ensemble.
void Segmenter::State::build_tuned_task(Member& member) {
  std::vector<TuningExample> examples;
  std::vector<model::TaskEmbedding> encoded;
  for (size_t i = 0; i < spec.references.size(); ++i) {
    ReferencePair pair = read_reference(i);
    io::check_same_grid(pair.image, pair.mask);
    if (!stored_task()) encoded.push_back(encode_one(member, pair));
    std::vector<at::Tensor> masks;
    for (long v : labels) masks.push_back(pair.mask.voxels.eq(v).to(at::kFloat));
    examples.push_back({io::normalise_intensity(pair.image.voxels, intensity), at::stack(masks)});
  }
  member.task = stored_task() ? load_task(member) : model::TaskEmbedding::mean(encoded);
  if (member.task.num_classes() != static_cast<long>(labels.size()))
    throw SettingError("task_file", "the stored task has " + std::to_string(member.task.num_classes()) +
                                        " classes but the references give " + std::to_string(labels.size()));
  TuningOptions tuning = spec.tuning;
  // The loss the model was trained with, as the method tunes (IRIS-SPEC).
  tuning.loss = member.model.loss.value_or(model::LossWeights{});
  std::string source = member.model.loss ? "the model file" : "default: the model file records none";
  if (spec.tune_loss) {
    tuning.loss.region = *spec.tune_loss;
    source = setting_name("tune_loss");
  }
  std::ostringstream weights;
  weights << tuning.loss.dice << ":" << tuning.loss.bce;
  member.tuning_loss = model::region_loss_name(tuning.loss.region) + " + BCE, " + weights.str() + " (" + source + ")";
  tuning.device = options.device;
  tuning.classes_per_pass = options.classes_per_pass;
  if (options.tuning_progress) tuning.progress = options.tuning_progress;
  const auto t = Clock::now();
  TuningResult tuned = tune_task_embedding(*member.model.net, member.task, examples, tuning);
  timings.add("tune", t);
  member.task = tuned.task;
  member.tuning_losses = tuned.losses;
  if (!spec.tuned_task_out.empty()) member.task.save(spec.tuned_task_out);
}

void Segmenter::State::build_retrieval_task(Member& member) {
  if (!spec.pool_dir.empty()) member.pool = EmbeddingPool::load(spec.pool_dir, member.model.fingerprint);
  const size_t stored = member.pool.entries.size();
  add_references_to_pool(member);
  // Object retrieval starts from the first reference pair, else from a
  // random pool entry (seeded: runs repeat).
  if (!spec.references.empty()) {
    member.task = member.pool.entries[stored].task;
    return;
  }
  std::mt19937 rng(spec.seed);
  member.task = member.pool.entries[std::uniform_int_distribution<size_t>(0, member.pool.entries.size() - 1)(rng)].task;
  labels = member.task.labels;
  if (spec.labels.empty()) return;
  std::vector<long> indices;
  for (long r : spec.labels) {
    const auto it = std::find(member.task.labels.begin(), member.task.labels.end(), r);
    if (it == member.task.labels.end())
      throw SettingError("labels", "label value " + std::to_string(r) + " is not in the pool's initial entry");
    indices.push_back(static_cast<long>(it - member.task.labels.begin()));
  }
  member.task = member.task.select(indices);
  labels = spec.labels;
}

model::TaskEmbedding Segmenter::State::task_for(Member& member, const at::Tensor& volume,
                                                std::vector<std::string>* picked) {
  if (strategy == "retrieval") {
    const auto t = Clock::now();
    RetrievalOptions ro;
    ro.window = window;
    ro.window.progress = nullptr;
    ro.threshold = options.threshold;
    ro.similarity = spec.similarity;
    RetrievalResult r = object_level_retrieval(*member.model.net, volume, member.task, member.pool, ro);
    timings.add("retrieval", t);
    for (const long e : r.chosen_entry) picked->push_back(e < 0 ? std::string("(initial)") : member.pool.entries[e].name);
    return r.task;
  }
  if (strategy == "image-retrieval") {
    const auto t = Clock::now();
    const at::Tensor features = image_feature_vector(*member.model.net, volume, window.window, options.device);
    const long e = nearest_image(features, member.pool);
    const auto& chosen = member.pool.entries[e].task;
    std::vector<long> indices;
    for (long l : member.task.labels) {
      const auto it = std::find(chosen.labels.begin(), chosen.labels.end(), l);
      if (it == chosen.labels.end())
        throw Error(member.pool.entries[e].name, "nearest pool entry lacks label value " + std::to_string(l));
      indices.push_back(static_cast<long>(it - chosen.labels.begin()));
    }
    timings.add("retrieval", t);
    picked->push_back(member.pool.entries[e].name);
    return chosen.select(indices);
  }
  return member.task;
}

}  // namespace iris::infer
