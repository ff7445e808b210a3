// iris-data convert on miniature replicas of each public dataset's released
// layout (folder and file names, label values, CSV/JSON formats as the
// datasets ship them: docs/datasets.md), made from real small volumes
// (MRIcron's Colin27 T1 and AAL atlas at every 12th voxel, AAL regions
// relabelled to each dataset's values). Each conversion must pass
// iris-data verify; bad input fails naming what was expected; nothing is
// left half-written; two training iterations run on a converted folder
// through the cache.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>

#include "iris/common/json.h"
#include "iris/io/image_io.h"
#include "iris/pipeline/dataset_check.h"
#include "iris/pipeline/dataset_convert.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using namespace iris;
using iris::testing::error_of;

namespace {

// Colin27 and AAL at every 12th voxel (16 x 19 x 16, one grid for every
// seed), rolled by `seed` voxels along x so that cases differ; AAL regions
// (left and right of large ones) relabelled 1..classes.
std::pair<Image, Image> small_case(int seed, int classes) {
  using at::indexing::Slice;
  static const Image t1 = io::read_image(iris::testing::kMricronTemplates + "ch2.nii.gz");
  static const Image aal = io::read_labels(iris::testing::kMricronTemplates + "aal.nii.gz");
  auto every12 = [&](const at::Tensor& t) {
    return at::roll(t.index({Slice(0, c10::nullopt, 12), Slice(0, c10::nullopt, 12), Slice(0, c10::nullopt, 12)}), {seed}, {2})
        .contiguous();
  };
  Image image, labels;
  image.voxels = every12(t1.voxels);
  const at::Tensor regions = every12(aal.voxels);
  labels.voxels = at::zeros_like(regions, at::kByte);
  // Large AAL regions in pairs (left/right): enough voxels at this size.
  const long groups[][2] = {{1, 2}, {3, 4}, {7, 8}, {19, 20}, {57, 58}, {59, 60}, {61, 62}, {65, 66}};
  for (int c = 0; c < classes; ++c)
    labels.voxels.masked_fill_((regions == groups[c % 8][0]) | (regions == groups[c % 8][1]), c + 1);
  for (Image* im : {&image, &labels}) {
    im->geometry = t1.geometry;
    im->geometry.size = {im->voxels.size(2), im->voxels.size(1), im->voxels.size(0)};
    for (auto& s : im->geometry.spacing) s *= 12;
  }
  return {image, labels};
}

void write(const Image& image, const fs::path& path) {
  fs::create_directories(path.parent_path());
  io::write_image(image, path.string());
}

Image four_d(const std::vector<Image>& volumes) {
  Image out = volumes[0];
  std::vector<at::Tensor> v;
  for (const auto& i : volumes) v.push_back(i.voxels.to(at::kFloat));
  out.voxels = at::stack(v);
  return out;
}

Json dataset_json(const fs::path& folder) {
  std::ifstream in(folder / "dataset.json");
  return Json::parse(in);
}

pipeline::ConvertSummary convert_and_verify(const std::string& format, const fs::path& src, const fs::path& dst) {
  const auto s = pipeline::convert_dataset(format, src.string(), dst.string());
  const auto check = pipeline::verify_raw_dataset(dst.string());
  std::string problems;
  for (const auto& p : check.problems) problems += p.file + ": " + p.problem + "\n";
  EXPECT_TRUE(check.problems.empty()) << format << ":\n" << problems;
  return s;
}

struct Convert : ::testing::Test {
  void SetUp() override {
    REQUIRE_DATA(iris::testing::kMricronTemplates + "aal.nii.gz");
    root = iris::testing::temp_folder("convert");
  }
  void TearDown() override { fs::remove_all(root); }
  fs::path root;
};

}  // namespace

TEST_F(Convert, KiTS19And23) {
  const fs::path data = root / "kits19" / "data";
  for (int c : {0, 1, 2, 210}) {
    auto [image, labels] = small_case(c, 2);
    char name[32];
    std::snprintf(name, sizeof name, "case_%05d", c);
    write(image, data / name / "imaging.nii.gz");
    if (c < 210) write(labels, data / name / "segmentation.nii.gz");
  }
  write(small_case(5, 2).second, data / "case_00005" / "segmentation.nii.gz");  // imaging not downloaded
  const auto s = convert_and_verify("kits19", root / "kits19", root / "Dataset040_KiTS19");
  EXPECT_EQ(s.training_cases, 3);
  EXPECT_EQ(s.test_cases, 1);
  EXPECT_EQ(s.labels, (std::vector<std::string>{"background", "kidney", "kidney_tumor"}));
  EXPECT_TRUE(fs::exists(root / "Dataset040_KiTS19" / "imagesTs" / "case_00210_0000.nii.gz"));
  // Copied byte for byte: the dataset's own header.
  EXPECT_EQ(fs::file_size(root / "Dataset040_KiTS19" / "labelsTr" / "case_00001.nii.gz"),
            fs::file_size(data / "case_00001" / "segmentation.nii.gz"));

  const fs::path d23 = root / "kits23" / "dataset";
  for (int c : {0, 1}) {
    auto [image, labels] = small_case(c, 3);
    char name[32];
    std::snprintf(name, sizeof name, "case_%05d", c);
    write(image, d23 / name / "imaging.nii.gz");
    write(labels, d23 / name / "segmentation.nii.gz");
    write(labels, d23 / name / "instances" / "kidney_instance-1_annotation-1.nii.gz");
  }
  const auto s23 = convert_and_verify("kits23", root / "kits23", root / "Dataset220_KiTS23");
  EXPECT_EQ(s23.training_cases, 2);
  EXPECT_EQ(dataset_json(root / "Dataset220_KiTS23")["labels"]["kidney_cyst"], 3);
}

TEST_F(Convert, AcdcFramesAreSeparateCases) {
  const fs::path db = root / "ACDC" / "database";
  for (const auto& [split, patient] : {std::pair<std::string, std::string>{"training", "patient001"},
                                       {"training", "patient002"}, {"testing", "patient101"}}) {
    const fs::path p = db / split / patient;
    fs::create_directories(p);
    std::ofstream(p / "Info.cfg") << "ED: 1\nES: 12\nGroup: NOR\nHeight: 180\nNbFrame: 30\nWeight: 80\n";
    auto [ed, ed_gt] = small_case(1, 3);
    auto [es, es_gt] = small_case(2, 3);
    write(ed, p / (patient + "_frame01.nii.gz"));
    write(ed_gt, p / (patient + "_frame01_gt.nii.gz"));
    write(es, p / (patient + "_frame12.nii.gz"));
    write(es_gt, p / (patient + "_frame12_gt.nii.gz"));
    write(four_d({ed, es}), p / (patient + "_4d.nii.gz"));
  }
  const auto s = convert_and_verify("acdc", root / "ACDC", root / "Dataset027_ACDC");
  EXPECT_EQ(s.training_cases, 4);  // ED and ES of two patients
  EXPECT_EQ(s.test_cases, 2);
  EXPECT_TRUE(fs::exists(root / "Dataset027_ACDC" / "labelsTr" / "patient002_frame12.nii.gz"));
  EXPECT_EQ(dataset_json(root / "Dataset027_ACDC")["labels"]["right_ventricle"], 1);
  EXPECT_EQ(dataset_json(root / "Dataset027_ACDC")["labels"]["left_ventricle"], 3);
}

TEST_F(Convert, MsdSplitsFourDimensionalImagesIntoChannels) {
  const fs::path task = root / "Task05_Prostate";
  for (int c : {0, 1}) {
    auto [t2, labels] = small_case(c, 2);
    Image adc = t2;
    adc.voxels = t2.voxels * 0.5 + 100;
    write(four_d({t2, adc}), task / "imagesTr" / ("prostate_0" + std::to_string(c) + ".nii.gz"));
    write(labels, task / "labelsTr" / ("prostate_0" + std::to_string(c) + ".nii.gz"));
  }
  write(four_d({small_case(3, 1).first, small_case(3, 1).first}), task / "imagesTs" / "prostate_03.nii.gz");
  std::ofstream(task / "imagesTr" / "._prostate_00.nii.gz") << "AppleDouble";  // as in the released tars
  std::ofstream(task / "dataset.json") << R"({
 "name": "PROSTATE", "description": "Prostate transitional zone and peripheral zone segmentation",
 "reference": "Radboud University, Nijmegen Medical Centre", "licence": "CC-BY-SA 4.0", "relase": "1.0 04/05/2018",
 "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
 "labels": {"0": "background", "1": "PZ", "2": "TZ"},
 "numTraining": 2, "numTest": 1,
 "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"},
              {"image": "./imagesTr/prostate_01.nii.gz", "label": "./labelsTr/prostate_01.nii.gz"}],
 "test": ["./imagesTs/prostate_03.nii.gz"]})";
  const auto s = convert_and_verify("msd", root, root / "Dataset005_Prostate");
  EXPECT_EQ(s.training_cases, 2);
  EXPECT_EQ(s.test_cases, 1);
  const fs::path out = root / "Dataset005_Prostate";
  const Json doc = dataset_json(out);
  EXPECT_EQ(doc["channel_names"]["1"], "ADC");
  EXPECT_EQ(doc["labels"]["prostate_peripheral_zone"], 1);
  // Channel 1 is the ADC volume, on the T2 grid.
  const Image adc = io::read_image((out / "imagesTr" / "prostate_01_0001.nii.gz").string());
  const Image t2 = io::read_image((out / "imagesTr" / "prostate_01_0000.nii.gz").string());
  EXPECT_TRUE(at::allclose(adc.voxels, t2.voxels * 0.5 + 100, 1e-4, 1e-3));
  EXPECT_TRUE(adc.geometry.same_grid(t2.geometry));

  // "cancer" is the task's organ's tumour.
  const fs::path liver = root / "liver_src" / "Task03_Liver";
  auto [ct, labels] = small_case(0, 2);
  write(ct, liver / "imagesTr" / "liver_0.nii.gz");
  write(labels, liver / "labelsTr" / "liver_0.nii.gz");
  std::ofstream(liver / "dataset.json") << R"({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
 "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}], "test": []})";
  const auto l = convert_and_verify("msd", root / "liver_src", root / "Dataset003_Liver");
  EXPECT_EQ(l.labels, (std::vector<std::string>{"background", "liver", "liver_tumor"}));
}

TEST_F(Convert, Amos22CtAndMriByIdWithCanonicalNames) {
  const fs::path a = root / "amos22";
  auto put = [&](const std::string& images, const std::string& labels, int id, bool with_label) {
    auto [image, map] = small_case(id, 15);
    char name[32];
    std::snprintf(name, sizeof name, "amos_%04d.nii.gz", id);
    write(image, a / images / name);
    if (with_label) write(map, a / labels / name);
  };
  put("imagesTr", "labelsTr", 1, true);
  put("imagesTr", "labelsTr", 508, true);
  put("imagesVa", "labelsVa", 2, true);
  put("imagesTs", "", 3, false);
  std::ofstream(a / "dataset.json") << R"({"name": "AMOS", "labels": {"0": "background", "1": "spleen", "2": "right kidney",
 "3": "left kidney", "4": "gall bladder", "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava",
 "10": "pancreas", "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
 "15": "prostate/uterus"}, "modality": {"0": "CT"}})";
  const auto ct = convert_and_verify("amos22", root, root / "Dataset218_AMOS_CT");
  EXPECT_EQ(ct.training_cases, 2);  // Tr and Va, CT ids only
  EXPECT_EQ(ct.test_cases, 1);
  EXPECT_EQ(ct.labels[2], "kidney_right");
  EXPECT_EQ(ct.labels[8], "aorta");
  EXPECT_EQ(ct.labels[9], "inferior_vena_cava");
  const auto mr = convert_and_verify("amos22_mr", root, root / "Dataset219_AMOS_MR");
  EXPECT_EQ(mr.training_cases, 1);
  EXPECT_TRUE(fs::exists(root / "Dataset219_AMOS_MR" / "labelsTr" / "amos_0508.nii.gz"));
}

TEST_F(Convert, SegthorBcvAutopet) {
  const fs::path st = root / "segthor";
  for (int p : {1, 2}) {
    auto [image, labels] = small_case(p, 4);
    char name[32];
    std::snprintf(name, sizeof name, "Patient_%02d", p);
    write(image, st / "train" / name / (std::string(name) + ".nii.gz"));
    write(labels, st / "train" / name / (p == 2 ? "GT.nii" : "GT.nii.gz"));  // some copies are uncompressed
  }
  write(small_case(3, 1).first, st / "test" / "Patient_41.nii.gz");
  const auto s = convert_and_verify("segthor", st, root / "Dataset055_SegTHOR");
  EXPECT_EQ(s.training_cases, 2);
  EXPECT_EQ(s.test_cases, 1);
  EXPECT_EQ(s.labels[2], "heart");

  const fs::path raw = root / "bcv" / "RawData";
  for (int c : {1, 2}) {
    auto [image, labels] = small_case(c, 13);
    char digits[8];
    std::snprintf(digits, sizeof digits, "%04d", c);
    write(image, raw / "Training" / "img" / ("img" + std::string(digits) + ".nii.gz"));
    write(labels, raw / "Training" / "label" / ("label" + std::string(digits) + ".nii.gz"));
  }
  write(small_case(3, 1).first, raw / "Testing" / "img" / "img0061.nii.gz");
  const auto b = convert_and_verify("bcv", root / "bcv", root / "Dataset017_BCV");
  EXPECT_EQ(b.training_cases, 2);
  EXPECT_EQ(b.test_cases, 1);
  EXPECT_EQ(b.labels.size(), 14u);
  EXPECT_EQ(b.labels[10], "portal_vein_and_splenic_vein");

  const fs::path study = root / "autopet" / "FDG-PET-CT-Lesions" / "PETCT_0af7ffe12a" / "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445";
  auto [ct, lesion] = small_case(0, 1);
  Image suv = ct;
  suv.voxels = ct.voxels / 100;
  write(ct, study / "CTres.nii.gz");
  write(ct, study / "CT.nii.gz");
  write(suv, study / "SUV.nii.gz");
  write(suv, study / "PET.nii.gz");
  write(lesion, study / "SEG.nii.gz");
  const auto ap = convert_and_verify("autopet", root / "autopet", root / "Dataset221_AutoPET");
  EXPECT_EQ(ap.training_cases, 1);
  EXPECT_EQ(dataset_json(root / "Dataset221_AutoPET")["channel_names"]["1"], "PET");
  EXPECT_TRUE(fs::exists(root / "Dataset221_AutoPET" / "imagesTr" /
                         "PETCT_0af7ffe12a_08-12-2005-NA-PET-CT_Ganzkoerper_primaer_mit_KM-10445_0001.nii.gz"));
}

TEST_F(Convert, MnmsFramesFromTheInformationCsv) {
  const fs::path open = root / "OpenDataset";
  fs::create_directories(open);
  std::ofstream(open / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv")
      << "External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight\n"
      << "A0S9V9,Siemens,A,1,0,3,67,HCM,M,175,80\n"
      << "B1C2D3,Philips,B,2,1,2,55,NOR,F,160,60\n";
  std::vector<Image> cine, gt;
  for (int t = 0; t < 4; ++t) {
    auto [image, labels] = small_case(t, 3);
    cine.push_back(image);
    Image g = labels;
    if (t != 0 && t != 3) g.voxels.zero_();  // labelled at ED and ES only
    gt.push_back(g);
  }
  write(four_d(cine), open / "Training" / "Labeled" / "A0S9V9" / "A0S9V9_sa.nii.gz");
  write(four_d(gt), open / "Training" / "Labeled" / "A0S9V9" / "A0S9V9_sa_gt.nii.gz");
  write(four_d(cine), open / "Testing" / "B1C2D3" / "B1C2D3_sa.nii.gz");
  const auto s = convert_and_verify("mnms", root, root / "Dataset114_MNMs");
  EXPECT_EQ(s.training_cases, 2);  // ED (0) and ES (3)
  EXPECT_EQ(s.test_cases, 2);
  const Image es = io::read_labels((root / "Dataset114_MNMs" / "labelsTr" / "A0S9V9_frame03.nii.gz").string());
  EXPECT_TRUE(at::equal(es.voxels.to(at::kByte), gt[3].voxels.to(at::kByte)));
  EXPECT_EQ(s.labels[1], "left_ventricle");  // the reverse of ACDC
}

TEST_F(Convert, TotalSegmentatorMasksMergeIntoOneMap) {
  const fs::path ts = root / "Totalsegmentator_dataset";
  for (int c = 0; c < 3; ++c) {
    char id[8];
    std::snprintf(id, sizeof id, "s%04d", c);
    auto [ct, map] = small_case(c, 3);
    write(ct, ts / id / "ct.nii.gz");
    const char* names[] = {"kidney_left", "liver", "spleen"};
    for (int k = 0; k < 3; ++k) {
      Image mask = map;
      mask.voxels = (map.voxels == k + 1).to(at::kByte);
      if (k == 2) mask.voxels.index_put_({0}, 1);  // overlaps the others: spleen (later) wins
      write(mask, ts / id / "segmentations" / (std::string(names[k]) + ".nii.gz"));
    }
  }
  std::ofstream(ts / "meta.csv") << "image_id;age;gender;split\ns0000;50;m;train\ns0001;60;f;val\ns0002;70;m;test\n";
  const auto s = convert_and_verify("totalsegmentator", ts, root / "Dataset291_TotalSeg");
  EXPECT_EQ(s.training_cases, 2);
  EXPECT_EQ(s.test_cases, 1);
  EXPECT_EQ(s.labels, (std::vector<std::string>{"background", "kidney_left", "liver", "spleen"}));
  const Image merged = io::read_labels((root / "Dataset291_TotalSeg" / "labelsTr" / "s0001.nii.gz").string());
  auto [ct1, map1] = small_case(1, 3);
  at::Tensor expected = map1.voxels.to(at::kInt).clone();
  expected.index_put_({0}, 3);
  EXPECT_TRUE(at::equal(merged.voxels, expected));
  EXPECT_TRUE(fs::exists(root / "Dataset291_TotalSeg" / "labelsTs" / "s0002.nii.gz"));
}

TEST_F(Convert, BadInputIsNamedAndNothingIsHalfWritten) {
  const std::string unknown = error_of([&] { pipeline::convert_dataset("lits", root.string(), (root / "x").string()); });
  EXPECT_NE(unknown.find("unknown format 'lits'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("kits19"), std::string::npos) << unknown;
  EXPECT_NE(error_of([&] { pipeline::convert_dataset("acdc", (root / "absent").string(), (root / "x").string()); })
                .find("source folder not found"),
            std::string::npos);
  // A KiTS layout given as ACDC: the error says what was expected.
  auto [image, labels] = small_case(0, 2);
  write(image, root / "kits" / "case_00000" / "imaging.nii.gz");
  write(labels, root / "kits" / "case_00000" / "segmentation.nii.gz");
  const std::string wrong = error_of([&] { pipeline::convert_dataset("acdc", (root / "kits").string(), (root / "out").string()); });
  EXPECT_NE(wrong.find("patientNNN/ with Info.cfg"), std::string::npos) << wrong;
  // A damaged file half-way: no destination, no temporary folder.
  write(image, root / "kits" / "case_00001" / "imaging.nii.gz");
  write(labels, root / "kits" / "case_00001" / "segmentation.nii.gz");
  fs::resize_file(root / "kits" / "case_00001" / "segmentation.nii.gz", 60);
  const std::string damaged = error_of([&] { pipeline::convert_dataset("kits19", (root / "kits").string(), (root / "out").string()); });
  EXPECT_NE(damaged.find("case_00001"), std::string::npos) << damaged;
  for (const auto& e : fs::directory_iterator(root))
    EXPECT_EQ(e.path().filename().string().rfind("out", 0), std::string::npos) << e.path() << " left behind";
  // An existing destination is never written into.
  fs::create_directories(root / "taken");
  EXPECT_NE(error_of([&] { pipeline::convert_dataset("kits19", (root / "kits").string(), (root / "taken").string()); })
                .find("exists already"),
            std::string::npos);
  // The program: usage errors and the download text.
  const auto usage = iris::testing::run_program(iris::testing::program_path("iris-data"), "convert lits a b",
                                                (root / "usage.log").string());
  EXPECT_EQ(usage.exit_code, 3) << usage.output;
  EXPECT_NE(usage.output.find("known: "), std::string::npos) << usage.output;
  const auto download = iris::testing::run_program(iris::testing::program_path("iris-data"), "download msd",
                                                   (root / "download.log").string());
  EXPECT_EQ(download.exit_code, 0);
  EXPECT_NE(download.output.find("Task09_Spleen.tar   # md5 410d4a301da4e5b2f6f86ec3ddba524e"), std::string::npos)
      << download.output;
}

TEST_F(Convert, TwoTrainingIterationsOnAConvertedFolderThroughTheCache) {
  const fs::path data = root / "kits19" / "data";
  for (int c : {0, 1}) {
    auto [image, labels] = small_case(c, 2);
    char name[32];
    std::snprintf(name, sizeof name, "case_%05d", c);
    write(image, data / name / "imaging.nii.gz");
    write(labels, data / name / "segmentation.nii.gz");
  }
  const auto convert = iris::testing::run_program(iris::testing::program_path("iris-data"),
                                                  "convert kits19 " + (root / "kits19").string() + " " + root.string() +
                                                      " --dataset-id 40",
                                                  (root / "convert.log").string());
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  const fs::path dataset = root / "Dataset040_kits19";
  ASSERT_TRUE(fs::exists(dataset / "dataset.json")) << convert.output;
  std::ofstream(root / "train.yaml") << "model:\n  preset: tiny\n  memory_bank_size: 4\n"
                                     << "train:\n  iterations: 2\n  batch: 1\n  patch: 16\n  max_classes: 2\n"
                                     << "  warmup: 1\n  checkpoint_every: 0\n  validate_every: 0\n  log_every: 1\n"
                                     << "  output_dir: " << (root / "run").string() << "\n"
                                     << "data:\n  cache: " << (root / "cache").string() << "\n  cache_memory_gb: 0.001\n"
                                     << "  class_vocabulary: " << IRIS_TEST_DATA_DIR << "/../configs/classes.yaml\n"
                                     << "  datasets:\n    kits:\n      layout: nnunet\n      root: " << dataset.string()
                                     << "\n      modality: CT\n      split: [1, 0, 0]\n";
  const auto train = iris::testing::run_program(iris::testing::program_path("iris-train"), (root / "train.yaml").string(),
                                                (root / "train.log").string());
  ASSERT_EQ(train.exit_code, 0) << train.output;
  EXPECT_TRUE(fs::exists(root / "run" / "model.iris"));
  long entries = 0;
  for (const auto& f : fs::directory_iterator(root / "cache")) entries += f.path().extension() == ".irisvol";
  EXPECT_EQ(entries, 2);
}
