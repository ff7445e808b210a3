#pragma once
// Internal to the pipeline area: an nnU-Net v2 raw folder being written
// (iris-data convert, iris-rsna prepare). Everything goes into a temporary
// folder next to the destination, renamed into place by finish(); a run that
// fails leaves nothing.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "iris/common/atomic_file.h"
#include "iris/common/error.h"
#include "iris/common/file_names.h"
#include "iris/common/image.h"
#include "iris/common/json.h"
#include "iris/common/label_list.h"
#include "iris/io/image_io.h"
#include "iris/pipeline/dataset_convert.h"

namespace iris::pipeline::detail {

namespace fs = std::filesystem;

// One source of a written file: a file to copy (3-D .nii.gz), a file to
// read and write, or an image in memory.
struct Source {
  std::string path;
  std::optional<Image> image;
  bool labels = false;
};

class RawFolder {
 public:
  RawFolder(const std::string& destination, std::string format)
      : destination_(destination), format_(std::move(format)) {
    if (fs::exists(destination_))
      throw Error(destination_, "exists already: convert into a new folder (remove it to convert again)");
    // A missing parent is made (as nnU-Net's tools do); a file in its place is refused.
    const fs::path parent = fs::path(destination_).parent_path();
    if (!parent.empty()) {
      std::error_code ec;
      if (fs::exists(parent) && !fs::is_directory(parent))
        throw Error(parent.string(), "is a file; the converted dataset needs a folder here");
      fs::create_directories(parent, ec);
      if (ec) throw Error(parent.string(), "cannot create the folder for " + destination_ + ": " + ec.message());
    }
    temporary_ = destination_ + ".partial-" + std::to_string(::getpid());
    fs::remove_all(temporary_);
    for (const char* sub : {"imagesTr", "labelsTr", "imagesTs"}) fs::create_directories(fs::path(temporary_) / sub);
  }
  ~RawFolder() {
    std::error_code ignored;
    if (!done_) fs::remove_all(temporary_, ignored);
  }

  void set_channels(std::vector<std::string> names) { channels_ = std::move(names); }
  void set_labels(std::vector<std::string> names_by_value) { labels_ = std::move(names_by_value); }
  void set_description(std::string text) { description_ = std::move(text); }
  // Keys added to dataset.json (beside nnU-Net's own).
  void set_extra(Json extra) { extra_ = std::move(extra); }
  // Another file of the folder (a split, a report), written with the rest.
  void add_text_file(const std::string& relative, const std::string& text) {
    write_text_file((fs::path(temporary_) / relative).string(), text);
  }

  void add_training(const std::string& id, const std::vector<Source>& channels, const Source& label) {
    check_id(id);
    for (size_t c = 0; c < channels.size(); ++c) write(channels[c], "imagesTr/" + channel_name(id, c));
    Source l = label;
    l.labels = true;
    write(l, "labelsTr/" + id + ".nii.gz");
    ++training_;
  }
  void add_test(const std::string& id, const std::vector<Source>& channels, const std::optional<Source>& label = {}) {
    check_id(id);
    for (size_t c = 0; c < channels.size(); ++c) write(channels[c], "imagesTs/" + channel_name(id, c));
    if (label) {
      fs::create_directories(fs::path(temporary_) / "labelsTs");
      Source l = *label;
      l.labels = true;
      write(l, "labelsTs/" + id + ".nii.gz");
    }
    ++test_;
  }

  ConvertSummary finish(const std::string& name, const std::string& source) {
    if (training_ == 0) throw Error(source, "no training case found for format " + format_);
    Json labels = Json::object();
    for (size_t v = 0; v < labels_.size(); ++v)
      if (!labels_[v].empty()) labels[v == 0 ? "background" : labels_[v]] = static_cast<long>(v);
    Json channels = Json::object();
    for (size_t c = 0; c < channels_.size(); ++c) channels[std::to_string(c)] = channels_[c];
    Json doc = {{"name", name},
                      {"description", description_.empty() ? "converted by iris-data convert " + format_ + " from " + source
                                                           : description_},
                      {"channel_names", channels},
                      {"labels", labels},
                      {"numTraining", training_},
                      {"numTest", test_},
                      {"file_ending", ".nii.gz"},
                      {"iris_source_format", format_}};
    for (auto it = extra_.begin(); it != extra_.end(); ++it) doc[it.key()] = it.value();
    write_text_file((fs::path(temporary_) / "dataset.json").string(), dump(doc, 4) + "\n");
    fs::rename(temporary_, destination_);
    done_ = true;
    ConvertSummary s;
    s.folder = destination_;
    s.training_cases = training_;
    s.test_cases = test_;
    s.labels = labels_;
    return s;
  }

 private:
  static std::string channel_name(const std::string& id, size_t c) {
    char suffix[16];
    std::snprintf(suffix, sizeof suffix, "_%04zu", c);
    return id + suffix + ".nii.gz";
  }
  void check_id(const std::string& id) {
    if (safe_path_component(id) != id)
      throw Error(id, "cannot name a case: a case name is one file name (not '.' or '..', no leading '.', '/', '\\' "
                      "or control characters)");
    if (!ids_.insert(id).second) throw Error(id, "two source cases become the case '" + id + "'");
  }
  void write(const Source& s, const std::string& relative) {
    const std::string target = (fs::path(temporary_) / relative).string();
    if (s.image) {
      io::write_image(*s.image, target);
      return;
    }
    const std::string lower = [&] {
      std::string t = s.path;
      std::transform(t.begin(), t.end(), t.begin(), ::tolower);
      return t;
    }();
    if (lower.size() > 7 && lower.compare(lower.size() - 7, 7, ".nii.gz") == 0) {
      // Byte for byte: the dataset's own header, geometry and data type. The
      // read first checks the file (size against header, gzip intact, 3-D).
      if (s.labels) io::read_labels(s.path);
      else io::read_image(s.path);
      fs::copy_file(s.path, target);
      return;
    }
    Image image = s.labels ? io::read_labels(s.path) : io::read_image(s.path);
    if (s.labels) image.voxels = narrow_labels(image.voxels);
    io::write_image(image, target);
  }

  std::string destination_, format_, temporary_, description_;
  Json extra_ = Json::object();
  std::vector<std::string> channels_, labels_;
  std::set<std::string> ids_;
  long training_ = 0, test_ = 0;
  bool done_ = false;
};

}  // namespace iris::pipeline::detail
