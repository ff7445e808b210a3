// Intensity schemes on real data: white-stripe finds the white matter of the
// KmeansTest brain (its own tissue classes, from insighttoolkit5-examples,
// are the independent judge) and puts it at mean 0, std 1.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "iris/io/intensity.h"
#include "iris/io/image_io.h"
#include "support/test_support.h"

namespace {
const std::string kData = "/usr/share/doc/insighttoolkit5-examples/examples/Data/";
}

TEST(WhiteStripe, TheStripeIsWhiteMatterOfKmeansTest) {
  REQUIRE_DATA(kData + "KmeansTest_T1UCharRaw.nii.gz");
  REQUIRE_DATA(kData + "KmeansTest_T1RawSkullStrip.nii.gz");
  REQUIRE_DATA(kData + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz");
  const auto t1 = iris::io::read_image(kData + "KmeansTest_T1UCharRaw.nii.gz");
  const auto brain = iris::io::read_labels(kData + "KmeansTest_T1RawSkullStrip.nii.gz").voxels > 0;
  const auto classes = iris::io::read_labels(kData + "KmeansTest_T1KmeansPrelimSegmentation.nii.gz").voxels;
  // The brightest tissue class: the one with the highest mean T1 inside the brain.
  long brightest = -1;
  double best = -1e30;
  const at::Tensor values = std::get<0>(at::_unique(classes.masked_select(brain)));
  for (long i = 0; i < values.numel(); ++i) {
    const long c = values[i].item<long>();
    const at::Tensor in_class = brain & (classes == c);
    if (in_class.sum().item<long>() < 100) continue;
    const double mean = t1.voxels.masked_select(in_class).mean().item<double>();
    if (mean > best) best = mean, brightest = c;
  }
  ASSERT_GE(brightest, 0);
  const auto s = iris::io::white_stripe(t1.voxels, brain);
  const double in_white = (s.stripe & (classes == brightest)).sum().item<double>() / s.stripe.sum().item<double>();
  std::printf("white-stripe mode %.1f, stripe [%.1f, %.1f], %.0f voxels, %.1f%% in class %ld\n", s.mode, s.low, s.high,
              s.stripe.sum().item<double>(), 100 * in_white, brightest);
  EXPECT_GE(in_white, 0.8);
  const at::Tensor normalised = iris::io::white_stripe_normalise(t1.voxels, brain);
  const at::Tensor stripe = normalised.masked_select(s.stripe);
  EXPECT_NEAR(stripe.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(stripe.std().item<double>(), 1.0, 1e-4);
  // The named scheme over the non-zero voxels of the skull-stripped image.
  const at::Tensor stripped = t1.voxels * brain.to(at::kFloat);
  const at::Tensor by_name = iris::io::normalise_intensity(stripped, "mr-whitestripe");
  EXPECT_NEAR(by_name.masked_select(s.stripe).mean().item<double>(), 0.0, 0.2);
}
