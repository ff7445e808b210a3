#pragma once
// Turning reference images with label maps into task embeddings.
#include <string>
#include <vector>

#include "iris/infer/sliding_window.h"
#include "iris/io/image.h"
#include "iris/model/task_embedding.h"

namespace iris::infer {

// The classes of a reference label map: its distinct non-zero values in
// ascending order, or `requested` after checking each is present (iris::Error
// naming the file and the missing values otherwise).
std::vector<long> reference_label_values(const io::Image& labels, const std::vector<long>& requested = {});

// Encodes one reference pair: checks that image and labels share a grid,
// normalises the image with `intensity` (data::normalise_intensity), crops a
// model-sized window around the masks, and encodes all classes at once.
model::TaskEmbedding encode_reference(model::IrisNetImpl& net, const io::Image& image, const io::Image& labels,
                                      const std::vector<long>& label_values, const std::string& intensity,
                                      const c10::Device& device, const std::string& model_fingerprint);

}  // namespace iris::infer
