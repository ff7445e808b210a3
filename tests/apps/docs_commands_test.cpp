// Every command of the README and docs/ runs as written, as far as a test can
// tell without the user's data: each `iris-*` program named in a code block
// exists, and each --flag it is given is one that program (or the named
// subcommand) declares in its --help. A renamed or removed flag fails here
// until the docs follow.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "support/test_support.h"

namespace fs = std::filesystem;

namespace {

struct Command {
  std::string file, text;
};

// Shell commands in fenced code blocks, continuation lines joined.
std::vector<Command> commands_in(const fs::path& file) {
  std::ifstream in(file);
  std::vector<Command> out;
  std::string line, pending;
  bool in_block = false;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) {
      in_block = !in_block;
      pending.clear();
      continue;
    }
    if (!in_block) continue;
    const auto hash = line.find(" #");
    if (hash != std::string::npos) line = line.substr(0, hash);  // a comment
    if (!line.empty() && line.back() == '\\') {
      pending += line.substr(0, line.size() - 1) + " ";
      continue;
    }
    pending += line;
    if (pending.find("iris-") != std::string::npos) out.push_back({file.filename().string(), pending});
    pending.clear();
  }
  return out;
}

std::string help_of(const std::string& program, const std::string& sub) {
  static std::map<std::string, std::string> cache;
  const std::string key = program + " " + sub;
  if (cache.count(key)) return cache[key];
  const fs::path log = iris::testing::temp_folder("docs_help") / "help.txt";
  const auto r = iris::testing::run_program(iris::testing::shell_quoted(iris::testing::program_path(program)),
                                            (sub.empty() ? "" : sub + " ") + "--help", log.string());
  return cache[key] = r.exit_code == 0 ? r.output : "";
}

}  // namespace

TEST(DocsCommands, EveryFlagOfEveryDocumentedCommandExists) {
  std::vector<fs::path> files{fs::path(IRIS_TEST_DATA_DIR) / ".." / "README.md"};
  for (const auto& e : fs::directory_iterator(fs::path(IRIS_TEST_DATA_DIR) / ".." / "docs"))
    if (e.path().extension() == ".md") files.push_back(e.path());
  const std::regex program_re(R"((^|[\s;|&(])(iris-(infer|train|eval|preprocess|labels|import|bench|data|rsna))(?=\s|$))");
  long checked = 0;
  std::string problems;
  for (const auto& file : files)
    for (const auto& c : commands_in(file)) {
      // Each program named in the line, with the words that follow it.
      for (std::sregex_iterator m(c.text.begin(), c.text.end(), program_re), end; m != end; ++m) {
        const std::string program = (*m)[2];
        if (!fs::exists(iris::testing::program_path(program))) {
          problems += c.file + ": " + program + " is not a program of this build\n";
          continue;
        }
        std::istringstream rest(c.text.substr(m->position(0) + m->length(0)));
        std::vector<std::string> words;
        for (std::string w; rest >> w;) {
          if (w == "|" || w == "&&" || w == ";" || w == ">" || w.rfind("iris-", 0) == 0) break;
          words.push_back(w);
        }
        std::string sub;
        if (!words.empty() && std::regex_match(words[0], std::regex("[a-z]+")) &&
            help_of(program, "").find("\n  " + words[0]) != std::string::npos)
          sub = words[0];
        const std::string help = help_of(program, sub) + help_of(program, "");
        for (const auto& w : words) {
          if (w.rfind("--", 0) != 0 || w.size() < 3) continue;
          const std::string flag = w.substr(0, w.find('='));
          if (!std::regex_match(flag, std::regex("--[a-z0-9][a-z0-9-]*"))) continue;
          ++checked;
          if (!std::regex_search(help, std::regex(flag + "(?![a-z0-9-])")))
            problems += c.file + ": " + program + (sub.empty() ? "" : " " + sub) + " has no " + flag + " (in: " +
                        c.text + ")\n";
        }
      }
    }
  EXPECT_GT(checked, 50) << "the docs' commands were not found";
  EXPECT_EQ(problems, "");
}

// Every relative link of the README and docs/ (the dated logs included)
// names a file that exists: moving or renaming a page fails here.
TEST(DocsCommands, EveryRelativeLinkNamesAFileThatExists) {
  const fs::path root = fs::path(IRIS_TEST_DATA_DIR) / "..";
  std::vector<fs::path> files{root / "README.md"};
  for (const auto& e : fs::recursive_directory_iterator(root / "docs"))
    if (e.path().extension() == ".md") files.push_back(e.path());
  const std::regex link_re(R"(\]\(([^)#\s]+)(#[^)]*)?\))");
  long checked = 0;
  std::string problems;
  for (const auto& file : files) {
    std::ifstream in(file);
    const std::string text{std::istreambuf_iterator<char>(in), {}};
    for (std::sregex_iterator m(text.begin(), text.end(), link_re), end; m != end; ++m) {
      const std::string target = (*m)[1];
      if (target.rfind("http", 0) == 0 || target.rfind("mailto:", 0) == 0) continue;
      ++checked;
      if (!fs::exists(file.parent_path() / target))
        problems += file.lexically_relative(root).string() + ": " + target + "\n";
    }
  }
  EXPECT_GT(checked, 20);
  EXPECT_TRUE(problems.empty()) << "links to nothing:\n" << problems;
}

// docs/cli.md ends with every program's and subcommand's --help, generated
// by tools/make_cli_reference.py: a flag added, removed or reworded without
// rerunning it fails here, with the difference. Built with another CLI11
// release than the reference was written with (its help layout differs),
// the flags of every program and subcommand are compared instead.
TEST(DocsCommands, TheFlagReferenceInCliMdIsWhatTheProgramsPrint) {
  const fs::path root = fs::path(IRIS_TEST_DATA_DIR) / "..";
  const fs::path log = fs::temp_directory_path() / ("iris_cli_reference_" + std::to_string(::getpid()) + ".txt");
  const std::string bin = fs::path(iris::testing::program_path("iris-infer")).parent_path().string();
  const std::string command = "python3 '" + (root / "tools" / "make_cli_reference.py").string() + "' --check '" + bin +
                              "' '" + (root / "docs" / "cli.md").string() + "' > '" + log.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  const std::string output{std::istreambuf_iterator<char>(in), {}};
  fs::remove(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
}
