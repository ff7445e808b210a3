#pragma once
// The RSNA Intracranial Aneurysm Detection 2025 challenge end to end
// (iris-rsna; docs/rsna.md):
//   prepare  the challenge folder (series/, train.csv, train_localizers.csv,
//            segmentations/) -> nnU-Net raw folders iris-train reads
//   predict  series folders -> the submission CSV iris-eval rsna scores
// DICOM needs the ITK build; everything else is plain files.
#include <array>
#include <functional>
#include <string>
#include <vector>

#include "iris/common/json.h"
#include "iris/infer/segmenter.h"

namespace iris::pipeline {

// One row of train_localizers.csv: an aneurysm marked as a point on one
// SOP instance ('x' column, 'y' row in pixels; 'f' the frame of a
// multi-frame file).
struct RsnaLocalizer {
  std::string series, sop;
  double x = 0, y = 0;
  long frame = -1;    // -1: no 'f' given
  long location = 0;  // 1..13: its column in eval::rsna_label_columns(), plus one
  long line = 0;      // of the CSV file
};

// The coordinates string of train_localizers.csv, a Python dict literal:
// "{'x': 258.36, 'y': 261.37}" or with "'f': 12". iris::Error naming
// `where` when it is anything else (missing x or y, unknown keys, not numbers).
void parse_rsna_coordinates(const std::string& text, const std::string& where, double& x, double& y, long& frame);
// Every row of train_localizers.csv; iris::Error naming the file and line
// for a missing column, an unknown location name or bad coordinates.
std::vector<RsnaLocalizer> read_rsna_localizers(const std::string& csv_path);

// The raw folders prepare writes under its output folder.
inline constexpr const char* kRsnaCtDataset = "Dataset901_RSNAAneurysmCT";
inline constexpr const char* kRsnaMrDataset = "Dataset902_RSNAAneurysmMR";
inline constexpr const char* kRsnaVesselDataset = "Dataset903_RSNAVessels";

struct RsnaPrepareOptions {
  double radius_mm = 4.0;                   // --radius-mm: the sphere each localizer becomes
  std::array<double, 3> split{0.8, 0.1, 0.1};  // train / val / test fractions, by series
  long seed = 0;                            // of the split
  long frame_base = 0;                      // 'f' counts frames from this (0: as pydicom's pixel_array indexes)
  std::function<void(long, long, const std::string&)> progress;  // (done, total, series)
  std::function<void(const std::string&)> note;
};

struct RsnaPrepareSummary {
  std::vector<std::string> folders;  // the raw folders written
  long series = 0, positive_series = 0, spheres = 0, vessel_cases = 0;
  long skipped_folders = 0;          // series folders not in train.csv
};

// Every series of train.csv (its folder DATA/series/UID) becomes a case named
// by its SeriesInstanceUID: the volume as read from DICOM (HU for CT) and a
// label map on its grid holding one sphere per localizer, valued by its
// location (1..13); CTA series go to kRsnaCtDataset, MR ones to
// kRsnaMrDataset (their intensities need different schemes). Vessel
// segmentations (segmentations/UID/*_cowseg.nii[.gz], with UID.nii[.gz] as
// the image when present, else the series) become kRsnaVesselDataset.
// Each folder has dataset.json (the 13 location names as labels), split.tsv
// (by series, `split` and `seed`, as iris-train's split with the same values
// makes it). Everything is checked first (CSV rows, locations, coordinates,
// folders) and written into temporary folders renamed at the end: an error
// names the file and line or folder, and leaves nothing.
RsnaPrepareSummary rsna_prepare(const std::string& data, const std::string& output, const RsnaPrepareOptions& options = {});

// How each series' probability maps become the submission's 14 numbers.
struct RsnaScoring {
  long smoothing = 3;     // box filter edge (voxels) over each map first; 1 = none
  double quantile = 1.0;  // a location's probability: this quantile of its smoothed map (1 = max)
  std::string present = "max";  // "Aneurysm Present" from the 13: max | noisy-or | mean
};

struct RsnaPredictOptions {
  std::vector<std::string> models;     // an ensemble when several
  std::vector<double> model_weights;
  infer::TaskSpec task;                // label value v of the task = location v (1..13)
  infer::SegmenterOptions segmenter;   // probabilities are switched on
  RsnaScoring scoring;
  std::string train_csv;               // priors: its column means ("" = 0.5)
  long num_parts = 1, part_id = 0;     // array jobs: this part's series only
  std::function<void(long, long, const std::string&, double)> progress;  // (done, total, series, seconds left)
};

struct RsnaPredictSummary {
  long series = 0, failed = 0;
  Json report;  // per series: seconds, the 14 numbers or the error; the segmenter's report
};

// The 14 numbers of one series from its segmentation: each location in the
// task from its map, the others (and all, when `probabilities` is empty)
// from `priors` (rsna_label_columns() order).
std::vector<double> rsna_series_scores(const infer::Segmentation& segmentation, const RsnaScoring& scoring,
                                       const std::vector<double>& priors);

// Segments every series folder under `series_root` (each subfolder is a
// series named by its folder) and writes `output_csv`: the submission's
// header (SeriesInstanceUID, the 13 locations, Aneurysm Present), one row
// per series sorted by UID, probabilities in [0, 1]. A series that fails to
// read or segment gets the priors and is listed in the report (never
// dropped). The CSV is written atomically.
RsnaPredictSummary rsna_predict(const std::string& series_root, const std::string& output_csv,
                                const RsnaPredictOptions& options);

}  // namespace iris::pipeline
