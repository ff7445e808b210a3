#pragma once
// Turning reference images with label maps into task embeddings.
#include <string>
#include <vector>

#include "iris/infer/sliding_window.h"
#include "iris/common/image.h"
#include "iris/model/task_embedding.h"

namespace iris::infer {

// The classes of a reference label map: its distinct non-zero values in
// ascending order, or `requested` after checking each is present (iris::Error
// naming the file and the missing values otherwise).
// More than `max_labels` distinct non-zero values (a mask that is really an
// image, say) is an iris::Error before anything per label is allocated.
std::vector<long> reference_label_values(const Image& labels, const std::vector<long>& requested = {},
                                         long max_labels = 64);

// Encodes one reference pair: checks that image and labels share a grid,
// normalises the image with `intensity` (io::normalise_intensity), crops a
// model-sized window around the masks, and encodes the classes. With
// classes_per_window > 0 the classes go in groups of that many, each group
// from a window centred on its own masks (as training centres references).
model::TaskEmbedding encode_reference(model::IrisNetImpl& net, const Image& image, const Image& labels,
                                      const std::vector<long>& label_values, const std::string& intensity,
                                      const c10::Device& device, const std::string& model_fingerprint,
                                      long classes_per_window = 0);

// A model-sized window of a volume and its masks, for encoding or tuning.
struct MaskedWindow {
  at::Tensor image;  // [1, 1, d, h, w]
  at::Tensor masks;  // [1, K, d, h, w] float 0/1
};

// Crops volume [Z, Y, X] and masks [K, Z, Y, X] (padded at the far end when
// smaller) to the window of window_shape(volume, max_window) centred on the
// bounding box of all masks. Masks wider than the window are cut at its border
// (predicted masks may be); the window still holds foreground of every class
// that has any, when the classes lie close enough together.
MaskedWindow crop_around_masks(const at::Tensor& volume, const at::Tensor& masks, long max_window);

// Encodes classes of a normalised volume from masks [K, Z, Y, X]: one window
// when all masks fit in it, else one window per class. Every mask needs at
// least one voxel. Labels 1..K; CPU result.
model::TaskEmbedding encode_masks(model::IrisNetImpl& net, const at::Tensor& volume, const at::Tensor& masks,
                                  const c10::Device& device, const std::string& model_fingerprint);

}  // namespace iris::infer
