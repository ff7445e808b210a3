#include "iris/infer/connected_components.h"

#include <algorithm>
#include <array>
#include <numeric>

#include <ATen/ATen.h>

#include "iris/common/error.h"
#include "iris/common/internal_error.h"

namespace iris::infer {

namespace {

// Union-find over provisional labels with path halving; the smaller root
// wins so roots stay in order of first appearance.
struct DisjointSets {
  std::vector<int32_t> parent;
  int32_t make() {
    parent.push_back(static_cast<int32_t>(parent.size()));
    return parent.back();
  }
  int32_t find(int32_t a) {
    while (parent[a] != a) {
      parent[a] = parent[parent[a]];
      a = parent[a];
    }
    return a;
  }
  void unite(int32_t a, int32_t b) {
    a = find(a);
    b = find(b);
    if (a == b) return;
    if (a < b) parent[b] = a;
    else parent[a] = b;
  }
};

}  // namespace

ComponentLabels connected_components(const at::Tensor& mask, Connectivity connectivity) {
  if (mask.dim() != 3) internal_error("connected components", "expected a 3-D mask [Z, Y, X]");
  const at::Tensor fg = mask.ne(0).to(at::kByte).contiguous().cpu();
  const long Z = fg.size(0), Y = fg.size(1), X = fg.size(2);
  const uint8_t* in = fg.data_ptr<uint8_t>();
  at::Tensor labels = at::zeros({Z, Y, X}, at::kInt);
  int32_t* out = labels.data_ptr<int32_t>();

  // Neighbours already visited in raster order (z, then y, then x).
  std::vector<std::array<long, 3>> back;
  for (long dz = -1; dz <= 0; ++dz)
    for (long dy = -1; dy <= 1; ++dy)
      for (long dx = -1; dx <= 1; ++dx) {
        const long offset = (dz * 3 + dy) * 3 + dx;  // raster position relative to the centre
        if (offset >= 0) continue;
        const int touching_axes = (dz != 0) + (dy != 0) + (dx != 0);
        if (connectivity == Connectivity::faces && touching_axes != 1) continue;
        back.push_back({dz, dy, dx});
      }

  // Pass 1: provisional labels (1-based; 0 in the sets is unused) and unions.
  DisjointSets sets;
  sets.make();
  for (long z = 0; z < Z; ++z)
    for (long y = 0; y < Y; ++y)
      for (long x = 0; x < X; ++x) {
        const long i = (z * Y + y) * X + x;
        if (!in[i]) continue;
        int32_t label = 0;
        for (const auto& d : back) {
          const long nz = z + d[0], ny = y + d[1], nx = x + d[2];
          if (nz < 0 || ny < 0 || ny >= Y || nx < 0 || nx >= X) continue;
          const int32_t n = out[(nz * Y + ny) * X + nx];
          if (n == 0) continue;
          if (label == 0) label = n;
          else sets.unite(label, n);
        }
        out[i] = label != 0 ? label : sets.make();
      }

  // Pass 2: consecutive final labels in order of first appearance.
  std::vector<int32_t> final_label(sets.parent.size(), 0);
  ComponentLabels result;
  for (size_t p = 1; p < sets.parent.size(); ++p) {
    const int32_t root = sets.find(static_cast<int32_t>(p));
    if (final_label[root] == 0) {
      result.sizes.push_back(0);
      final_label[root] = static_cast<int32_t>(result.sizes.size());
    }
    final_label[p] = final_label[root];
  }
  const long n = Z * Y * X;
  for (long i = 0; i < n; ++i)
    if (out[i] != 0) {
      out[i] = final_label[out[i]];
      ++result.sizes[out[i] - 1];
    }
  result.labels = labels;
  return result;
}

at::Tensor postprocess_labels(const at::Tensor& label_map, const std::vector<long>& label_values,
                              const PostprocessOptions& options) {
  if (!options.active()) return label_map;
  at::Tensor result = label_map.clone();
  for (long value : label_values) {
    const at::Tensor mask = label_map.eq(value);
    ComponentLabels cc = connected_components(mask, options.connectivity);
    if (cc.sizes.empty()) continue;
    const long largest = std::max_element(cc.sizes.begin(), cc.sizes.end()) - cc.sizes.begin();
    // keep[c] for component c (index 0 = background, never kept).
    std::vector<uint8_t> keep(cc.sizes.size() + 1, 0);
    for (size_t c = 0; c < cc.sizes.size(); ++c) {
      bool kept = cc.sizes[c] >= options.min_component_voxels;
      if (options.keep_largest) kept = kept && static_cast<long>(c) == largest;
      keep[c + 1] = kept;
    }
    const at::Tensor keep_table = at::tensor(std::vector<uint8_t>(keep.begin(), keep.end()), at::kByte);
    const at::Tensor kept = keep_table.index_select(0, cc.labels.reshape({-1}).to(at::kLong)).view(mask.sizes());
    result.masked_fill_(mask.logical_and(kept.eq(0)), 0);
  }
  return result;
}

}  // namespace iris::infer
