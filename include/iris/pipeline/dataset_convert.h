#pragma once
// iris-data convert: public datasets as downloaded -> nnU-Net v2 raw folders
// (imagesTr/CASE_XXXX.nii.gz, labelsTr/CASE.nii.gz, imagesTs, dataset.json
// with canonical class names, channel names and file ending), on each
// dataset's own geometry: 3-D .nii.gz files are copied byte for byte, other
// files (4-D channels or frames, .nii, merged masks) are written with their
// geometry. The case folders are found wherever they sit under the source
// folder. The result is built in a temporary folder next to the destination
// and renamed into place at the end, so a failed conversion leaves nothing.
//
// Facts per dataset (layouts, label values, splits) follow each dataset's
// own documentation and the converters nnU-Net (nnunetv2/dataset_conversion)
// and the IRIS author (Stanford-AIMI/MASS preprocessing) publish; see
// docs/datasets.md.
#include <functional>
#include <string>
#include <vector>

namespace iris::pipeline {

// The formats convert() knows, each with a line of description.
const std::vector<std::pair<std::string, std::string>>& dataset_formats();

struct ConvertOptions {
  // The class vocabulary for names read from the source (MSD, AMOS,
  // TotalSegmentator); "" = the shipped configs/classes.yaml (common/shipped_data.h).
  std::string class_vocabulary;
  // Called with each note (skipped files, names left as they were).
  std::function<void(const std::string&)> note;
};

struct ConvertSummary {
  std::string folder;  // the dataset folder written
  long training_cases = 0, test_cases = 0;
  std::vector<std::string> labels;  // names by value (index 0 = background)
};

// Converts the dataset `format` found under `source` into the nnU-Net v2 raw
// folder `destination` (which must not exist). iris::Error naming the
// argument (FORMAT), file or folder for an unknown format (listing the known ones), a layout
// that does not match the format (saying which file was expected), or a
// damaged file.
ConvertSummary convert_dataset(const std::string& format, const std::string& source, const std::string& destination,
                               const ConvertOptions& options = {});

// Where and how to download a dataset, as text to print (no download is
// made): the URL, the licence line, the size and checksum where published,
// and the command to run.
std::string download_instructions(const std::string& format);

}  // namespace iris::pipeline
