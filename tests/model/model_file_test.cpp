// Model and task files are data: the shipped model read by an independent
// reader (Python's standard library, no iris, no torch) equals what iris
// loads, and old TorchScript files are refused before they can run code.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "iris/common/tensor_file.h"
#include "iris/model/model_file.h"
#include "iris/model/task_embedding.h"
#include "support/test_support.h"

namespace fs = std::filesystem;
using iris::testing::error_of;
using iris::testing::run_program;
using iris::testing::temp_folder;

namespace {
const std::string kRepo = std::string(IRIS_TEST_DATA_DIR) + "/..";
const std::string kDemoModel = kRepo + "/models/demo_brain.iris";
const std::string kReader = std::string(IRIS_TEST_DATA_DIR) + "/common/read_safetensors.py";

nlohmann::json independent_read(const std::string& file, const fs::path& dir) {
  const auto r = run_program("python3", iris::testing::shell_quoted(kReader) + " " + iris::testing::shell_quoted(file),
                             (dir / "reader.json").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}
}  // namespace

TEST(ModelFile, TheShippedModelIsWhatAnIndependentReaderSees) {
  REQUIRE_DATA(kDemoModel);
  const fs::path dir = temp_folder("model_reader");
  const nlohmann::json seen = independent_read(kDemoModel, dir);
  EXPECT_EQ(seen["format"], "iris-model-v2");
  EXPECT_TRUE(seen["checksum_ok"].get<bool>()) << "the CRC-32 recomputed by Python differs from the stored one";
  const iris::model::IrisModel model = iris::model::load_model(kDemoModel);
  EXPECT_EQ(seen["metadata"]["fingerprint"], model.fingerprint);
  EXPECT_EQ(nlohmann::json::parse(seen["metadata"]["class_names"].get<std::string>()).get<std::vector<std::string>>(),
            model.class_names);
  size_t compared = 0;
  auto compare = [&](const std::string& name, const at::Tensor& t) {
    ASSERT_TRUE(seen["tensors"].contains(name)) << name;
    const auto& s = seen["tensors"][name];
    EXPECT_EQ(s["shape"].get<std::vector<int64_t>>(), t.sizes().vec()) << name;
    const double sum = t.to(at::kDouble).sum().item<double>();
    EXPECT_NEAR(s["sum"].get<double>(), sum, 1e-6 * (1 + std::abs(sum)) + 1e-3) << name;
    ++compared;
  };
  for (const auto& p : model.net->named_parameters()) compare("param/" + p.key(), p.value());
  for (const auto& b : model.net->named_buffers()) compare("buffer/" + b.key(), b.value());
  EXPECT_EQ(compared, seen["tensors"].size());
  EXPECT_GT(compared, 100u);
  fs::remove_all(dir);
}

TEST(ModelFile, FlippedBytesInAModelAreDamageNamingTheFile) {
  REQUIRE_DATA(kDemoModel);
  const fs::path dir = temp_folder("model_flip");
  std::ifstream in(kDemoModel, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  // 400 bytes flipped in the middle of the weights, as the issue found loading silently.
  for (size_t i = 0; i < 400; ++i) bytes[bytes.size() / 2 + i] ^= 0x5A;
  std::ofstream(dir / "flipped.iris", std::ios::binary) << bytes;
  const std::string msg = error_of([&] { iris::model::load_model((dir / "flipped.iris").string()); });
  EXPECT_NE(msg.find("flipped.iris"), std::string::npos) << msg;
  EXPECT_NE(msg.find("is damaged"), std::string::npos) << msg;
  fs::remove_all(dir);
}

// A TorchScript file whose __setstate__ writes a marker when it is opened:
// what a hostile .iris or .task of the first format could do. Made with
// PyPI's torch in the project's .venv (scripts/setup.sh).
TEST(ModelFile, AFileThatWouldRunCodeIsRefusedWithoutRunningIt) {
  const fs::path dir = temp_folder("hostile");
  const fs::path marker = dir / "code_ran";
  // torch.from_file(path, shared=True) creates the file; assigning its
  // result keeps TorchScript from dropping the call.
  const std::string script = std::string(R"(
import sys, torch
from typing import Tuple
class Evil(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.zeros(1)
    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)
    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        self.training = state[1]
        self.w = torch.from_file(")") + marker.string() + R"(", True, 8)
torch.jit.save(torch.jit.script(Evil()), sys.argv[1])
)";
  std::ofstream(dir / "make.py") << script;
  const auto made = run_program(iris::testing::kPython, (dir / "make.py").string() + " " + (dir / "evil.iris").string(),
                                (dir / "make.log").string());
  ASSERT_EQ(made.exit_code, 0) << made.output;
  ASSERT_TRUE(fs::exists(dir / "evil.iris"));
  fs::remove(marker);  // scripting the module ran __setstate__ once already
  fs::copy_file(dir / "evil.iris", dir / "evil.task");
  std::string msg = error_of([&] { iris::model::load_model((dir / "evil.iris").string()); });
  EXPECT_NE(msg.find("iris-import --trust-legacy"), std::string::npos) << msg;
  msg = error_of([&] { iris::model::TaskEmbedding::load((dir / "evil.task").string()); });
  EXPECT_NE(msg.find("iris-import --trust-legacy"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(marker)) << "opening the file ran its code";
  fs::remove_all(dir);
}

// The loss a model was trained with travels in its file (in-context tuning
// optimises the same); an edited record is refused naming the file.
TEST(ModelFile, TheTrainingLossTravelsWithTheModelAndAnEditedOneIsRefused) {
  const fs::path dir = temp_folder("model_loss");
  iris::model::IrisModel m;
  m.config = iris::model::preset("tiny");
  m.net = iris::model::IrisNet(m.config);
  const std::string plain = (dir / "plain.iris").string(), tversky = (dir / "tversky.iris").string();
  iris::model::save_model(m, plain);
  EXPECT_FALSE(iris::model::load_model(plain).loss.has_value()) << "a file that records no loss read as one";
  m.loss = iris::model::LossWeights{iris::model::RegionLoss::adaptive_tversky, 0.5, 2.0};
  iris::model::save_model(m, tversky);
  const auto loaded = iris::model::load_model(tversky).loss;
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->region, iris::model::RegionLoss::adaptive_tversky);
  EXPECT_EQ(loaded->dice, 0.5);
  EXPECT_EQ(loaded->bce, 2.0);

  const std::pair<std::string, std::string> edits[] = {
      {"loss: focal\ndice_weight: 1\nbce_weight: 1\n", "focal"},
      {"loss: soft_dice\ndice_weight: -1\nbce_weight: 1\n", "dice_weight"},
      {"loss: soft_dice\ndice_weight: nan\nbce_weight: 1\n", "dice_weight"},
      {"loss: soft_dice\ndice_weight: 0\nbce_weight: 0\n", "both 0"},
      {"loss: soft_dice\ndice_weight: 1\n", "bce_weight"},
      {"loss: soft_dice\ndice_weight: 1\nbce_weight: 1\ngamma: 2\n", "gamma"}};
  int i = 0;
  for (const auto& [text, named] : edits) {
    iris::TensorFile file = iris::TensorFile::load(tversky, "iris-model-v2", "iris model file");
    file.set("loss", text);
    const std::string edited = (dir / ("edited" + std::to_string(i++) + ".iris")).string();
    file.save(edited);
    const std::string msg = error_of([&] { iris::model::load_model(edited); });
    EXPECT_NE(msg.find(edited), std::string::npos) << msg;
    EXPECT_NE(msg.find(named), std::string::npos) << text << " -> " << msg;
  }
}
