// test_prepare_cli.cpp — `subq prepare code` as a user runs it, on a small tree of files made here:
// a run that trains a small tokenizer, reports unusable files and writes shards + manifest; a re-run
// into the same --out refused (exit 2) until --force; a run with --tokenizer reusing the first
// tokenizer; bad flags exit 2.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

namespace {

using subq::test::binary;
using subq::test::has;
using subq::test::Result;
using subq::test::run;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST_CASE("subq prepare code end to end", "[cli][prepare]") {
  const fs::path dir = fs::temp_directory_path() / ("subq-prepare-e2e-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const fs::path src = dir / "src";
  fs::create_directories(src / "lib");
  fs::create_directories(src / "held");
  for (int i = 0; i < 20; ++i) {
    std::ofstream f(src / "lib" / ("m" + std::to_string(i) + ".py"));
    for (int k = 0; k < 8; ++k)
      f << "def g" << k << "(a, b):\n    # step " << i << "\n    return a * " << k << " + b\n\n";
  }
  for (int i = 0; i < 3; ++i) std::ofstream(src / "held" / ("h" + std::to_string(i) + ".h")) << "int h" << i << "();\n";
  std::ofstream(src / "lib" / "bin.py", std::ios::binary) << std::string("\x7f" "ELF\0\0\0", 7);
  std::ofstream(src / "lib" / "bad.py", std::ios::binary) << "s = '\xff\xfe'\n";

  const std::string out = (dir / "out").string();
  const std::string common = " --input " + src.string() + " --out " + out +
                             " --val-fraction 0.1 --val-subtree held --threads 2 --shard-tokens 500";
  auto r = run("prepare code --vocab-size 300" + common);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(has(r.out, "skipping"));
  CHECK(has(r.out, "bin.py: binary: NUL byte at offset 4"));
  CHECK(has(r.out, "bad.py: invalid UTF-8"));
  CHECK(has(r.out, "prepared"));
  for (const char* f : {"tokenizer.json", "manifest.json", "train/shard-00000.bin", "val/shard-00000.bin"})
    CHECK(fs::exists(fs::path(out) / f));
  auto m = nlohmann::json::parse(slurp(fs::path(out) / "manifest.json"));
  CHECK(m["skipped"].size() == 2);
  CHECK(m["tokenizer"]["vocab_size"] <= 300);  // a tiny corpus may run out of merges before 300
  CHECK(m["tokenizer"]["vocab_size"] > 257);
  CHECK(has(m["command"].get<std::string>(), "prepare code --vocab-size 300"));
  CHECK(m["commit"].get<std::string>().size() > 0);
  int held_in_val = 0;
  for (const auto& f : m["files"])
    if (f["rel"].get<std::string>().rfind("held/", 0) == 0) held_in_val += f["split"] == "val";
  CHECK(held_in_val == 3);
  CHECK(m["splits"]["train"]["shards"].size() > 1);  // --shard-tokens 500

  auto again = run("prepare code --vocab-size 300" + common);
  CHECK(again.rc == 2);
  CHECK(has(again.out, "already exists"));
  CHECK(has(again.out, "--force"));

  const std::string tok = (dir / "tok.json").string();
  fs::copy_file(fs::path(out) / "tokenizer.json", tok);
  auto forced = run("prepare code --tokenizer " + tok + common + " --force");
  CHECK(forced.rc == 0);
  auto m2 = nlohmann::json::parse(slurp(fs::path(out) / "manifest.json"));
  CHECK(m2["tokenizer"]["checksum"] == m["tokenizer"]["checksum"]);
  CHECK(m2["splits"] == m["splits"]);  // same tokenizer, same split: same shards

  CHECK(run("prepare code --tokenizer " + tok + " --vocab-size 300" + common).rc == 2);  // exclusive
  CHECK(run("prepare code --val-fraction 1.5 --out " + (dir / "o2").string() + " --input " + src.string()).rc == 2);
  CHECK(run("prepare code --input " + (dir / "missing").string() + " --out " + (dir / "o3").string()).rc == 2);
  CHECK(run("prepare").rc == 2);
  CHECK(run("prepare code --help").rc == 0);
  fs::remove_all(dir);
}
