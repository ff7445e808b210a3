#pragma once
// iris-data verify: an nnU-Net v2 raw dataset folder checked the way
// nnU-Net's integrity check does, and more, before hours of training find
// the problem: dataset.json complete, every training image with its label
// map and every channel, the same grid for a case's channels and labels,
// label values all declared, no NaN/Inf, readable (untruncated) files, no
// empty label map where classes are declared.
#include <functional>
#include <string>
#include <vector>

namespace iris::pipeline {

struct DatasetProblem {
  std::string file;     // the file (or folder) the problem is about
  std::string problem;  // what is wrong
};

struct DatasetSummary {
  long training_cases = 0, test_cases = 0, channels = 0;
  std::vector<DatasetProblem> problems;
};

// Every problem of `folder` (none: the dataset is fit to train on). Cases are
// read one at a time; `progress` (may be empty) gets (done, total).
DatasetSummary verify_raw_dataset(const std::string& folder,
                                  const std::function<void(long, long)>& progress = {});

}  // namespace iris::pipeline
