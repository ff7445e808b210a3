// ROC AUC by average ranks against hand-computed values and a brute-force
// pair count, and the RSNA 2025 weighted column AUC with its input errors.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <random>

#include "iris/common/error.h"
#include "iris/eval/rsna.h"

namespace iris::eval {
namespace {

// AUC as the share of (positive, negative) pairs ranked right, ties one half.
double auc_by_pair_count(const std::vector<double>& scores, const std::vector<int>& labels) {
  double ordered = 0;
  int64_t pairs = 0;
  for (size_t i = 0; i < scores.size(); ++i)
    for (size_t j = 0; j < scores.size(); ++j) {
      if (!labels[i] || labels[j]) continue;
      ++pairs;
      ordered += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
    }
  return ordered / pairs;
}

TEST(RocAuc, HandComputedValues) {
  // sklearn's documented example: 3 of 4 pairs ordered.
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.2, 0.3}, {0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9, 0.2, 0.3}, {0, 1, 1}), 0.0);
}

TEST(RocAuc, TiesCountOneHalf) {
  // Positive 0.5 ties negative 0.5 (1/2) and beats 0.2 (1); 0.9 beats both (2): 3.5 / 4.
  EXPECT_DOUBLE_EQ(roc_auc({0.2, 0.5, 0.5, 0.9}, {0, 0, 1, 1}), 0.875);
  // All scores equal: every pair tied.
  EXPECT_DOUBLE_EQ(roc_auc({0.5, 0.5, 0.5, 0.5, 0.5}, {0, 1, 0, 1, 1}), 0.5);
  // A three-way tie across both classes: positives {0.4, 0.4, 0.9}, negatives
  // {0.1, 0.4}. Each 0.4 positive: 1 + 1/2; 0.9: 2. Total 5 of 6 pairs.
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.4, 0.4, 0.4, 0.9}, {0, 1, 0, 1, 1}), 5.0 / 6.0);
}

TEST(RocAuc, OneClassIsUndefined) {
  EXPECT_TRUE(std::isnan(roc_auc({0.1, 0.2}, {1, 1})));
  EXPECT_TRUE(std::isnan(roc_auc({0.1, 0.2}, {0, 0})));
  EXPECT_TRUE(std::isnan(roc_auc({}, {})));
}

TEST(RocAuc, AgreesWithBruteForcePairCount) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 2 + static_cast<int>(rng() % 300);
    std::vector<double> scores(n);
    std::vector<int> labels(n);
    // Coarse scores make many ties.
    for (int i = 0; i < n; ++i) {
      labels[i] = rng() % 3 == 0;
      scores[i] = static_cast<double>(rng() % 11) / 10.0 + 0.05 * labels[i] * (rng() % 2);
    }
    if (std::count(labels.begin(), labels.end(), 1) == 0) labels[0] = 1;
    if (std::count(labels.begin(), labels.end(), 0) == 0) labels[0] = 0;
    EXPECT_NEAR(roc_auc(scores, labels), auc_by_pair_count(scores, labels), 1e-12) << "trial " << trial;
  }
}

// Truth and prediction CSV text for `n` series; location column k has the
// positive series k % n; "Aneurysm Present" positives are the even series.
struct RsnaFiles {
  std::string truth, predictions;
};
RsnaFiles make_files(int n, bool swap_present_pair) {
  const auto& columns = rsna_label_columns();
  RsnaFiles f;
  f.truth = "SeriesInstanceUID,PatientAge,Modality";
  f.predictions = "SeriesInstanceUID";
  for (const auto& c : columns) f.truth += "," + c, f.predictions += ",\"" + c + "\"";
  f.truth += "\n";
  f.predictions += "\n";
  for (int s = 0; s < n; ++s) {
    const std::string uid = "1.2.840." + std::to_string(s);
    f.truth += uid + ",55,CTA";
    f.predictions += uid;
    for (size_t k = 0; k < columns.size(); ++k) {
      const bool present = columns[k] == kRsnaPresentColumn;
      const bool positive = present ? s % 2 == 0 : s == static_cast<int>(k) % n;
      f.truth += positive ? ",1" : ",0";
      double score = positive ? 0.9 : 0.1;
      // Swap the scores of series 0 (positive) and 1 (negative): one of the
      // (n/2)^2 pairs misordered.
      if (present && swap_present_pair && s < 2) score = s == 0 ? 0.1 : 0.9;
      f.predictions += "," + std::to_string(score);
    }
    f.truth += "\n";
    f.predictions += "\n";
  }
  return f;
}

TEST(RsnaScore, WeightsAneurysmPresentThirteen) {
  const RsnaFiles f = make_files(4, true);
  const RsnaScore s = score_rsna(parse_csv(f.predictions, "pred.csv"), parse_csv(f.truth, "truth.csv"));
  ASSERT_EQ(s.columns.size(), 14u);
  EXPECT_EQ(s.series, 4);
  EXPECT_TRUE(s.warnings.empty());
  // Present: positives {0, 2} scored {0.1, 0.9}, negatives {1, 3} scored
  // {0.9, 0.1}: pairs (0,1)=0, (0,3)=1/2, (2,1)=1/2, (2,3)=1 -> 2/4.
  EXPECT_DOUBLE_EQ(s.columns.back().auc, 0.5);
  EXPECT_EQ(s.columns.back().weight, 13.0);
  for (size_t k = 0; k + 1 < s.columns.size(); ++k) {
    EXPECT_DOUBLE_EQ(s.columns[k].auc, 1.0) << s.columns[k].column;
    EXPECT_EQ(s.columns[k].weight, 1.0);
    EXPECT_EQ(s.columns[k].positives, 1);
  }
  EXPECT_DOUBLE_EQ(s.weighted_auc, (13 * 0.5 + 13 * 1.0) / 26);
  const std::string json = rsna_json(s);
  EXPECT_NE(json.find("\"weighted_auc\": 0.75"), std::string::npos) << json;
}

TEST(RsnaScore, OneClassColumnIsExcludedWithAWarning) {
  // 14 series: location column k has series k as its only positive. Clearing
  // "Basilar Tip" (column 11) leaves it with negatives only.
  const RsnaFiles f = make_files(14, false);
  CsvTable truth = parse_csv(f.truth, "truth.csv");
  size_t basilar = 0;
  for (size_t i = 0; i < truth.header.size(); ++i)
    if (truth.header[i] == "Basilar Tip") basilar = i;
  for (auto& row : truth.rows) row[basilar] = "0";
  const RsnaScore s = score_rsna(parse_csv(f.predictions, "pred.csv"), truth);
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_NE(s.warnings[0].find("Basilar Tip"), std::string::npos);
  EXPECT_TRUE(std::isnan(s.columns[11].auc));
  EXPECT_DOUBLE_EQ(s.weighted_auc, 1.0);  // the others are perfect; weight renormalised
  const auto json = nlohmann::json::parse(rsna_json(s));
  EXPECT_EQ(json["excluded_columns"], nlohmann::json::array({"Basilar Tip"})) << json.dump();
}

std::string error_of(const std::string& predictions, const std::string& truth) {
  try {
    score_rsna(parse_csv(predictions, "pred.csv"), parse_csv(truth, "truth.csv"));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Replaces the first occurrence of `from` in `text`.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

TEST(RsnaScore, InputErrorsNameTheProblem) {
  const RsnaFiles f = make_files(3, false);
  ASSERT_EQ(error_of(f.predictions, f.truth), "");
  const std::string without_last = f.predictions.substr(0, f.predictions.find("1.2.840.2"));
  EXPECT_NE(error_of(without_last, f.truth).find("no prediction for truth series 1.2.840.2"), std::string::npos);
  // The last row again under an unknown series UID.
  const std::string last_uid = "1.2.840.2";
  const std::string extra = f.predictions + "9.9.9" + f.predictions.substr(f.predictions.rfind(last_uid) + last_uid.size());
  EXPECT_NE(error_of(extra, f.truth).find("series not in the truth: 9.9.9"), std::string::npos)
      << error_of(extra, f.truth);
  EXPECT_NE(error_of(replaced(f.predictions, "\"Basilar Tip\"", "Basilar"), f.truth)
                .find("pred.csv: missing column(s) 'Basilar Tip'"),
            std::string::npos);
  // Line 3 is series 1.2.840.1; its first value is "0.100000".
  const std::string text_value = replaced(f.predictions, "1.2.840.1,0.100000", "1.2.840.1,abc");
  EXPECT_NE(error_of(text_value, f.truth).find("pred.csv:3: column 'Left Infraclinoid Internal Carotid Artery': 'abc' is not a finite number"),
            std::string::npos) << error_of(text_value, f.truth);
  EXPECT_NE(error_of(replaced(f.predictions, "1.2.840.1,0.100000", "1.2.840.1,nan"), f.truth).find("not a finite number"),
            std::string::npos);
  EXPECT_NE(error_of(f.predictions, replaced(f.truth, "1.2.840.1,55,CTA,0", "1.2.840.1,55,CTA,2"))
                .find("truth.csv:3: column 'Left Infraclinoid Internal Carotid Artery': '2' is not 0 or 1"),
            std::string::npos);
  EXPECT_NE(error_of(replaced(f.predictions, "1.2.840.1,", "1.2.840.0,"), f.truth).find("appears twice"),
            std::string::npos);
  EXPECT_NE(error_of(replaced(f.predictions, "1.2.840.1,0.100000,", "1.2.840.1,"), f.truth)
                .find("pred.csv:3: 14 fields, the header has 15"),
            std::string::npos);
  // Only one class anywhere: nothing left to average.
  const RsnaFiles one = make_files(1, false);
  EXPECT_NE(error_of(one.predictions, one.truth).find("no label column has both classes"), std::string::npos);
}

TEST(Csv, QuotesBomAndCrLf) {
  const CsvTable t = parse_csv("\xEF\xBB\xBF" "a,\"b,c\"\r\n1,\"say \"\"hi\"\"\"\r\n\r\n2,\"x\ny\"\n", "t.csv");
  ASSERT_EQ(t.header, (std::vector<std::string>{"a", "b,c"}));
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.rows[0][1], "say \"hi\"");
  EXPECT_EQ(t.rows[1][1], "x\ny");
  EXPECT_EQ(t.line_of_row, (std::vector<int64_t>{2, 4}));
  EXPECT_THROW(parse_csv("a\n\"open", "t.csv"), Error);
}

}  // namespace
}  // namespace iris::eval
