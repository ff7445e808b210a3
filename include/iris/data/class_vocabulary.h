#pragma once
// One name per structure across datasets (configs/classes.yaml): AMOS calls
// it "right kidney", BCV "kidney_right", another "RK"; the memory bank needs
// one class id for all of them. The vocabulary maps every synonym to its
// canonical name; training renames each dataset's classes through it
// (data.class_vocabulary), and names it does not know stay as they are.
#include <map>
#include <string>
#include <vector>

#include "iris/data/dataset.h"

namespace iris::data {

class ClassVocabulary {
 public:
  // YAML: `canonical_name: [synonym, synonym, ...]` per structure. iris::Error
  // naming the file for a synonym claimed by two canonical names.
  static ClassVocabulary load(const std::string& path);

  // Lower case; spaces, hyphens and dots become "_"; runs of "_" collapse.
  static std::string normalise(const std::string& name);

  // The canonical name of `name` (compared normalised), or "" when unknown.
  std::string canonical(const std::string& name) const;

  // Renames every dataset's classes to canonical names. Returns the names
  // the vocabulary does not know (they keep their own name: a class of
  // their own). iris::Error when two classes of one dataset become one name.
  std::vector<std::string> apply(std::vector<DatasetSpec>& datasets) const;

  size_t size() const { return canonical_names_.size(); }

 private:
  std::map<std::string, std::string> by_synonym_;  // normalised synonym -> canonical
  std::vector<std::string> canonical_names_;
};

}  // namespace iris::data
