// cli_run.h — running the `subq` binary from e2e tests: run(args) executes it in the source tree
// (SUBQ_BINARY, set by CTest) and returns exit status and output (stderr merged unless told otherwise);
// prepare_tiny_corpus() makes the small code dataset the CLI tests train on.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include "subq_catch.h"
#include "test_support.h"

namespace subq::test {

using Result = ShellRun;

inline std::string binary() {
  const char* b = std::getenv("SUBQ_BINARY");
  return b ? b : "subq";
}

inline Result run(const std::string& args, bool merge_stderr = true) {
  return run_shell("cd '" + source_dir() + "' && '" + binary() + "' " + args, merge_stderr);
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Prepares the tiny code corpus of tests/data/tokenizer/code under root/data (train, val, tokenizer.json):
// the first file is the held-out split, `vocab` the BPE vocabulary size.
inline void prepare_tiny_corpus(const std::filesystem::path& root, int vocab = 320) {
  namespace fs = std::filesystem;
  fs::create_directories(root / "corpus" / "lib");
  fs::create_directories(root / "corpus" / "held");
  const fs::path src = fs::path(source_dir()) / "tests/data/tokenizer/code";
  int i = 0;
  for (const auto& e : fs::directory_iterator(src))
    fs::copy_file(e.path(), root / "corpus" / (i++ == 0 ? "held" : "lib") / e.path().filename(),
                  fs::copy_options::overwrite_existing);
  auto prep = run("prepare code --input " + (root / "corpus").string() + " --ext .txt --vocab-size " +
                  std::to_string(vocab) + " --val-subtree held --threads 2 --out " + (root / "data").string());
  INFO(prep.out);
  REQUIRE(prep.rc == 0);
}

}  // namespace subq::test
