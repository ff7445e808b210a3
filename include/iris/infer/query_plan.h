#pragma once
// Which queries a run segments and where each result goes: an image file, a
// folder of them, a .txt list, a DICOM series or a whole DICOM study, split
// into parts for array jobs (sharding), with finished cases skipped on
// --continue. infer::Segmenter::segment_files runs the jobs planned here.
#include <string>
#include <vector>

namespace iris::infer {

// One query of a run and where its results go.
struct QueryJob {
  std::string input;          // image file or DICOM folder
  std::string output;         // label map
  std::string probabilities;  // "" = none
  std::string dicom_seg;      // "" = none
  std::string series;         // DICOM series of `input` ("" = its only one, or QueryReadOptions::series)
  std::string name;           // case name in reports and statistics
};

// Which series of a DICOM study are queries (--series-filter
// "modality=CT,description=AX|axial,min-slices=20"): Modality equal (case
// insensitive), SeriesDescription matching the regex (ECMAScript, searched,
// case insensitive), at least min_slices slices. Series with fewer than 3
// slices (localisers, single images) are never volumes.
struct SeriesFilter {
  std::string modality, description;
  long min_slices = 3;
  static SeriesFilter parse(const std::string& text, const std::string& where);
};

struct PlanOptions {
  std::string probabilities;  // file, or folder for several queries ("" = none)
  std::string dicom_seg;      // file for one DICOM series, folder for a study ("" = none)
  std::string series;         // one DICOM series of the query folder (--series)
  SeriesFilter series_filter;
  // Sharding (--num-parts, --part-id): this part's cases are those whose
  // case-name hash (FNV-1a) modulo num_parts is part_id, so a case stays in
  // its part when others are added or removed.
  long num_parts = 1, part_id = 0;
  // Several queries write derived file names: an existing output is an error
  // unless `overwrite`, or the case is skipped with `skip_finished` (its
  // outputs exist; writes are atomic, so an existing file is complete).
  bool overwrite = false, skip_finished = false;
};

// An input left out of a run, and why (a finished case, a localiser, a
// series the filter excludes, a file that is no image slice).
struct SkippedQuery {
  std::string input, reason;
};

// A query argument as iris-infer takes it: an image file, a folder of image
// files, a .txt list of paths, a DICOM series folder, or a DICOM study: a
// folder (any depth, other files allowed) with several series, or one when
// `output` is an existing folder. Each series of a study is a case named by
// its SeriesInstanceUID, written under `output` at the series' folder
// relative to the query (OUTPUT/REL/UID.nii.gz; DICOM-SEGs likewise under the
// --dicom-seg folder). Several queries need `output` (and the probabilities,
// when asked) to be existing folders; image files are written there as
// CASE.nii.gz. One query writes where it is told.
std::vector<QueryJob> plan_queries(const std::string& query, const std::string& output, const PlanOptions& options = {},
                                   std::vector<SkippedQuery>* skipped = nullptr);

// The part of `names` (by index) that part `part_id` of `num_parts` takes.
std::vector<size_t> shard(const std::vector<std::string>& names, long num_parts, long part_id);

}  // namespace iris::infer
