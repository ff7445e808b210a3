// iris-rsna on a miniature replica of the RSNA 2025 aneurysm challenge's
// exact layout (series/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, train.csv,
// train_localizers.csv with dict-string coordinates, segmentations/), made
// from the 20-slice oblique MR series (tools/make_test_fixtures.py): single-frame MR, the same series
// re-encoded as one enhanced multi-frame file (shuffled frames, 'f' in the
// localizer), and a copy with new UIDs as a CT series.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "iris/eval/rsna.h"
#include "iris/io/image_io.h"
#include "iris/model/iris_net.h"
#include "iris/model/model_file.h"
#include "support/dicom_replica.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace iris::testing;

namespace {

const std::string kMrUid = "1.2.826.0.1.3680043.8.498.7001";  // set on the single-frame MR copy
const std::string kMultiUid = "1.2.826.0.1.3680043.8.498.7002";
const std::string kCtUid = "1.2.826.0.1.3680043.8.498.7003";

struct Localizer {
  std::string series, sop;
  double x, y;
  long frame;  // -1: none
  std::string location;
};

// Patient position of (x, y) on `file` (frame `frame` of an enhanced file),
// computed here from the headers: IPP + x * col spacing * row dir + y * row spacing * col dir.
std::array<double, 3> expected_point(const fs::path& file, double x, double y, long frame) {
  DcmFileFormat ff;
  EXPECT_TRUE(ff.loadFile(file.c_str()).good());
  DcmDataset& ds = *ff.getDataset();
  DcmItem* position_item = &ds;
  DcmItem* plane = &ds;
  DcmItem* measures = &ds;
  if (frame >= 0) {
    DcmItem *per = nullptr, *shared = nullptr;
    EXPECT_TRUE(ds.findAndGetSequenceItem(DCM_PerFrameFunctionalGroupsSequence, per, frame).good());
    EXPECT_TRUE(per->findAndGetSequenceItem(DCM_PlanePositionSequence, position_item, 0).good());
    EXPECT_TRUE(ds.findAndGetSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0).good());
    EXPECT_TRUE(shared->findAndGetSequenceItem(DCM_PlaneOrientationSequence, plane, 0).good());
    EXPECT_TRUE(shared->findAndGetSequenceItem(DCM_PixelMeasuresSequence, measures, 0).good());
  }
  double ipp[3], iop[6], ps[2];
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(position_item->findAndGetFloat64(DCM_ImagePositionPatient, ipp[i], i).good());
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(plane->findAndGetFloat64(DCM_ImageOrientationPatient, iop[i], i).good());
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(measures->findAndGetFloat64(DCM_PixelSpacing, ps[i], i).good());
  return {ipp[0] + x * ps[1] * iop[0] + y * ps[0] * iop[3], ipp[1] + x * ps[1] * iop[1] + y * ps[0] * iop[4],
          ipp[2] + x * ps[1] * iop[2] + y * ps[0] * iop[5]};
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

const std::string kHeader = [] {
  std::string h = "SeriesInstanceUID,PatientAge,PatientSex,Modality";
  for (const auto& c : iris::eval::rsna_label_columns()) h += "," + c;
  return h;
}();

std::string train_row(const std::string& uid, const std::string& modality, const std::vector<std::string>& positive) {
  std::string row = uid + ",61,Female," + modality;
  for (const auto& c : iris::eval::rsna_label_columns()) {
    bool p = std::find(positive.begin(), positive.end(), c) != positive.end();
    if (c == iris::eval::kRsnaPresentColumn) p = !positive.empty();
    row += p ? ",1" : ",0";
  }
  return row;
}

std::string localizer_csv(const std::vector<Localizer>& ls) {
  std::string text = "SeriesInstanceUID,SOPInstanceUID,coordinates,location\n";
  for (const auto& l : ls) {
    std::ostringstream c;
    c << "{'x': " << l.x << ", 'y': " << l.y;
    if (l.frame >= 0) c << ", 'f': " << l.frame;
    c << "}";
    text += l.series + "," + l.sop + ",\"" + c.str() + "\"," + l.location + "\n";
  }
  return text;
}

struct Replica {
  fs::path root;
  std::vector<Localizer> localizers;
  std::map<std::string, fs::path> sop_file;  // localizer SOP -> its file
};

Replica make_replica(const fs::path& root) {
  Replica r;
  r.root = root;
  const auto mr = copy_oblique_series(root / "series" / kMrUid, "MR", kMrUid);
  const auto ct = copy_oblique_series(root / "series" / kCtUid, "CT", kCtUid);
  write_enhanced(root / "series" / kMultiUid / "enhanced.dcm", /*shuffle=*/true, -1, kMultiUid);
  const std::string multi_sop = dicom_text(root / "series" / kMultiUid / "enhanced.dcm", DCM_SOPInstanceUID);
  fs::rename(root / "series" / kMultiUid / "enhanced.dcm", root / "series" / kMultiUid / (multi_sop + ".dcm"));
  r.localizers = {{kMrUid, mr[7], 120.5, 131.25, -1, "Basilar Tip"},
                  {kMultiUid, multi_sop, 100.0, 90.75, 12, "Left Middle Cerebral Artery"},
                  {kCtUid, ct[3], 140.0, 100.0, -1, "Anterior Communicating Artery"},
                  {kCtUid, ct[15], 60.25, 170.5, -1, "Right Posterior Communicating Artery"}};
  for (const auto& l : r.localizers) r.sop_file[l.sop] = root / "series" / l.series / (l.sop + ".dcm");
  write_file(root / "train.csv", kHeader + "\n" + train_row(kMrUid, "MRA", {"Basilar Tip"}) + "\n" +
                                     train_row(kMultiUid, "MRI T2", {"Left Middle Cerebral Artery"}) + "\n" +
                                     train_row(kCtUid, "CTA", {"Anterior Communicating Artery",
                                                               "Right Posterior Communicating Artery"}) + "\n");
  write_file(root / "train_localizers.csv", localizer_csv(r.localizers));
  return r;
}

long location_value(const std::string& name) {
  const auto& c = iris::eval::rsna_label_columns();
  return std::find(c.begin(), c.end(), name) - c.begin() + 1;
}

// Continuous voxel index (x, y, z) of a patient point on `g` (orthonormal direction).
std::array<double, 3> to_index(const iris::Geometry& g, const std::array<double, 3>& p) {
  std::array<double, 3> out{};
  for (int a = 0; a < 3; ++a) {
    double v = 0;
    for (int r = 0; r < 3; ++r) v += g.direction[r * 3 + a] * (p[r] - g.origin[r]);
    out[a] = v / g.spacing[a];
  }
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

ProgramRun rsna(const std::string& args, const fs::path& log) {
  return run_program(program_path("iris-rsna"), args, log.string());
}

}  // namespace

TEST(IrisRsna, PrepareTurnsTheChallengeFolderIntoTrainingSetsWithSpheresAtTheLocalizers) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = temp_folder("rsna_prepare");
  const Replica r = make_replica(dir / "data");
  // A vessel segmentation for the MR series, on its grid.
  const iris::Image mr = iris::io::read_image((dir / "data" / "series" / kMrUid).string());
  iris::Image cow;
  cow.geometry = mr.geometry;
  cow.voxels = at::zeros(mr.voxels.sizes(), at::kByte);
  cow.voxels.slice(0, 5, 9).slice(1, 100, 120).slice(2, 100, 130).fill_(3);
  fs::create_directories(dir / "data" / "segmentations" / kMrUid);
  iris::io::write_image(cow, (dir / "data" / "segmentations" / kMrUid / (kMrUid + "_cowseg.nii.gz")).string());
  fs::create_directories(dir / "data" / "series" / "not.in.train.csv");

  const auto run = rsna("prepare " + shell_quoted(dir / "data") + " " + shell_quoted(dir / "out") + " --seed 3",
                        dir / "log.txt");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("3 series (3 with aneurysms, 4 spheres), 1 vessel segmentations"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("not.in.train.csv is not in train.csv"), std::string::npos) << run.output;
  const fs::path ct = dir / "out" / "Dataset901_RSNAAneurysmCT", mrset = dir / "out" / "Dataset902_RSNAAneurysmMR",
                 vessels = dir / "out" / "Dataset903_RSNAVessels";
  for (const auto& f : {ct, mrset, vessels}) {
    ASSERT_TRUE(fs::is_regular_file(f / "dataset.json")) << f;
    const auto verify = run_program(program_path("iris-data"), "verify " + shell_quoted(f), (dir / "verify.txt").string());
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
  }
  const std::string json = read_text(mrset / "dataset.json");
  for (const auto& c : iris::eval::rsna_label_columns())
    if (c != iris::eval::kRsnaPresentColumn) EXPECT_NE(json.find("\"" + c + "\""), std::string::npos) << c;
  EXPECT_NE(json.find("\"MR\""), std::string::npos);
  EXPECT_NE(read_text(ct / "dataset.json").find("\"CT\""), std::string::npos);
  const std::string split = read_text(mrset / "split.tsv");
  EXPECT_NE(split.find(kMrUid), std::string::npos);
  EXPECT_NE(split.find(kMultiUid), std::string::npos);
  EXPECT_TRUE(fs::is_regular_file(vessels / "labelsTr" / (kMrUid + ".nii.gz")));

  // Each sphere: centred within half a voxel of the point the headers give, radius 4 mm.
  for (const auto& l : r.localizers) {
    const fs::path folder = l.series == kCtUid ? ct : mrset;
    const iris::Image labels = iris::io::read_labels((folder / "labelsTr" / (l.series + ".nii.gz")).string());
    const iris::Image image = iris::io::read_image((folder / "imagesTr" / (l.series + "_0000.nii.gz")).string());
    EXPECT_TRUE(labels.geometry.same_grid(image.geometry));
    const auto p = expected_point(r.sop_file.at(l.sop), l.x, l.y, l.frame);
    const auto expected = to_index(labels.geometry, p);
    const at::Tensor voxels = at::nonzero(labels.voxels.eq(location_value(l.location))).to(at::kDouble);  // z y x
    ASSERT_GT(voxels.size(0), 0) << l.location;
    const at::Tensor centre = voxels.mean(0);
    const std::array<double, 3> got{centre[2].item<double>(), centre[1].item<double>(), centre[0].item<double>()};
    for (int a = 0; a < 3; ++a) EXPECT_LE(std::abs(got[a] - expected[a]), 0.5) << l.location << " axis " << a;
    // Every painted voxel lies within 4 mm of the point.
    const auto& g = labels.geometry;
    for (long i = 0; i < voxels.size(0); ++i) {
      const double idx[3] = {voxels[i][2].item<double>(), voxels[i][1].item<double>(), voxels[i][0].item<double>()};
      double d2 = 0;
      for (int row = 0; row < 3; ++row) {
        double q = g.origin[row];
        for (int a = 0; a < 3; ++a) q += g.direction[row * 3 + a] * g.spacing[a] * idx[a];
        d2 += (q - p[row]) * (q - p[row]);
      }
      EXPECT_LE(std::sqrt(d2), 4.0 + 1e-3) << l.location;
    }
  }
  // The multi-frame series reads to the same voxels as the single-frame one.
  const iris::Image a = iris::io::read_image((mrset / "imagesTr" / (kMrUid + "_0000.nii.gz")).string());
  const iris::Image b = iris::io::read_image((mrset / "imagesTr" / (kMultiUid + "_0000.nii.gz")).string());
  EXPECT_TRUE(at::equal(a.voxels, b.voxels));

  // The shipped config trains on the prepared folders (a tiny model, a few steps).
  const auto train = run_program(
      program_path("iris-train"),
      shell_quoted(std::string(IRIS_TEST_DATA_DIR) + "/../configs/train/rsna_aneurysm.yaml") +
          " --set model.preset=tiny --set model.memory_bank_size=16 --set train.init_from= --set train.iterations=3"
          " --set train.batch=1 --set train.patch=32 --set train.device=cpu --set train.loader_workers=0"
          " --set train.validate_every=0 --set preprocess.spacing=[2,2,2] --set data.cache=" +
          shell_quoted(dir / "cache") + " --set data.datasets.rsna_cta.root=" + shell_quoted(ct) +
          " --set data.datasets.rsna_mr.root=" + shell_quoted(mrset) + " --set train.output_dir=" +
          shell_quoted(dir / "run"),
      (dir / "train.txt").string());
  EXPECT_EQ(train.exit_code, 0) << train.output;
  EXPECT_TRUE(fs::is_regular_file(dir / "run" / "model.iris")) << train.output;
  fs::remove_all(dir);
}

TEST(IrisRsna, BadChallengeFilesAreClearErrorsAndLeaveNothing) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = temp_folder("rsna_bad");
  Replica r = make_replica(dir / "data");
  const std::string good = localizer_csv(r.localizers);
  auto expect_failure = [&](const std::string& what, const std::string& message) {
    const auto run = rsna("prepare " + shell_quoted(dir / "data") + " " + shell_quoted(dir / "out"), dir / "log.txt");
    EXPECT_EQ(run.exit_code, 3) << what << "\n" << run.output;
    EXPECT_NE(run.output.find(message), std::string::npos) << what << "\n" << run.output;
    // Nothing half-written: no dataset, no temporary folder.
    if (fs::exists(dir / "out")) EXPECT_TRUE(fs::is_empty(dir / "out")) << what;
  };
  auto with = [&](size_t row, auto change) {
    auto ls = r.localizers;
    change(ls[row]);
    write_file(dir / "data" / "train_localizers.csv", localizer_csv(ls));
  };
  with(1, [](Localizer& l) { l.sop = "1.2.3.4.404"; });
  expect_failure("missing SOP", "train_localizers.csv:3: SOP instance 1.2.3.4.404 not found");
  with(2, [](Localizer& l) { l.location = "Left Big Artery"; });
  expect_failure("unknown location", "train_localizers.csv:4: unknown location 'Left Big Artery'");
  write_file(dir / "data" / "train_localizers.csv",
             good + kCtUid + "," + r.localizers[2].sop + ",\"{'x': 12.5}\",Basilar Tip\n");
  expect_failure("malformed coordinates", "train_localizers.csv:6: coordinates '{'x': 12.5}' lacks 'x' or 'y'");
  write_file(dir / "data" / "train_localizers.csv", good);
  // A series of train.csv whose folder holds no DICOM: named, nothing written.
  write_file(dir / "data" / "series" / "1.2.3.999" / "notes.txt", "not an image\n");
  std::ofstream(dir / "data" / "train.csv", std::ios::app) << train_row("1.2.3.999", "CTA", {}) << "\n";
  expect_failure("no DICOM", "1.2.3.999");
  fs::remove_all(dir);
}

TEST(IrisRsna, PredictWritesTheSubmissionTheScorerReads) {
  REQUIRE_DATA(kObliqueMr);
  const fs::path dir = temp_folder("rsna_predict");
  make_replica(dir / "data");
  ASSERT_EQ(rsna("prepare " + shell_quoted(dir / "data") + " " + shell_quoted(dir / "out"), dir / "log.txt").exit_code, 0);
  // A series folder that cannot be read: it gets the priors, never dropped.
  write_file(dir / "data" / "series" / "1.2.3.999" / "notes.txt", "not an image\n");
  torch::manual_seed(5);
  iris::model::IrisModel m;
  m.config = iris::model::preset("tiny");
  m.net = iris::model::IrisNet(m.config);
  m.net->eval();
  iris::model::save_model(m, (dir / "tiny.iris").string());
  const fs::path mrset = dir / "out" / "Dataset902_RSNAAneurysmMR";
  const auto run = rsna("predict --model " + shell_quoted(dir / "tiny.iris") + " --reference " +
                            shell_quoted(mrset / "imagesTr" / (kMrUid + "_0000.nii.gz")) + " --reference-mask " +
                            shell_quoted(mrset / "labelsTr" / (kMrUid + ".nii.gz")) + " --preprocess zscore --series " +
                            shell_quoted(dir / "data" / "series") + " --output " + shell_quoted(dir / "submission.csv") +
                            " --train-csv " + shell_quoted(dir / "data" / "train.csv") + " --report " +
                            shell_quoted(dir / "report.json") + " --threads 2",
                        dir / "predict.txt");
  ASSERT_EQ(run.exit_code, 4) << run.output;  // one series failed (given the priors), the rest done: docs/cli.md
  const auto table = iris::eval::read_csv((dir / "submission.csv").string());
  std::vector<std::string> header{"SeriesInstanceUID"};
  for (const auto& c : iris::eval::rsna_label_columns()) header.push_back(c);
  EXPECT_EQ(table.header, header);
  ASSERT_EQ(table.rows.size(), 4u);
  std::vector<std::string> order;
  for (const auto& row : table.rows) order.push_back(row[0]);
  EXPECT_EQ(order, (std::vector<std::string>{"1.2.3.999", kMrUid, kMultiUid, kCtUid}));
  for (const auto& row : table.rows)
    for (size_t j = 1; j < row.size(); ++j) {
      const double v = std::stod(row[j]);
      EXPECT_TRUE(v >= 0 && v <= 1) << row[0] << " " << header[j] << " " << v;
    }
  // The unreadable series: train.csv's means (3 series: Aneurysm Present 1, Basilar Tip 1/3, Left Infraclinoid 0).
  const auto& failed = table.rows[0];
  EXPECT_EQ(failed[std::find(header.begin(), header.end(), "Aneurysm Present") - header.begin()], "1.000000");
  EXPECT_EQ(failed[std::find(header.begin(), header.end(), "Basilar Tip") - header.begin()], "0.333333");
  EXPECT_EQ(failed[1], "0.000000");
  const std::string report = read_text(dir / "report.json");
  EXPECT_NE(report.find("\"error\""), std::string::npos);
  EXPECT_NE(run.output.find("1 failed"), std::string::npos) << run.output;
  // The segmented series: Basilar Tip (the reference's only location) comes from the model, the others are priors.
  const auto& segmented = table.rows[1];
  EXPECT_EQ(segmented[1], "0.000000");
  // The scorer reads the file.
  std::ofstream truth(dir / "truth.csv");
  truth << read_text(dir / "data" / "train.csv") << train_row("1.2.3.999", "CTA", {}) << "\n";
  truth.close();
  const auto scored = run_program(program_path("iris-eval"), "rsna --predictions " + shell_quoted(dir / "submission.csv") +
                                                                 " --truth " + shell_quoted(dir / "truth.csv"),
                                  (dir / "eval.txt").string());
  EXPECT_EQ(scored.exit_code, 0) << scored.output;
  EXPECT_NE(scored.output.find("Basilar Tip"), std::string::npos) << scored.output;
  fs::remove_all(dir);
}
