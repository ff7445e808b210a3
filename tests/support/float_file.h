#pragma once
// Raw little-endian float32 tensors of the test fixtures (C order), as the
// generators in tools/ write them; a missing or short file is an error.
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace iris_test {

inline at::Tensor read_float32_file(const std::string& path, std::vector<int64_t> shape) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("missing fixture " + path);
  at::Tensor t = at::empty(shape, at::kFloat);
  f.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * 4);
  if (f.gcount() != t.numel() * 4) throw std::runtime_error("short fixture " + path);
  return t;
}

}  // namespace iris_test
