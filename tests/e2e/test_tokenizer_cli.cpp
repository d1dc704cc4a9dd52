// test_tokenizer_cli.cpp — `subq tokenizer train|encode|decode` and `subq bench tokenizer` as a user runs
// them: a tokenizer trained from the committed code excerpts, encode/decode round trip through the CLI,
// exit codes and messages for bad input, and the bench record's fields.
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

namespace {

using subq::test::binary;
using subq::test::has;
using subq::test::Result;
using subq::test::run;

}  // namespace

TEST_CASE("subq tokenizer train, encode, decode, bench", "[cli][tokenizer]") {
  fs::path dir = fs::temp_directory_path() / ("subq_tokenizer_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::string tok = (dir / "tok.json").string();
  auto r = run("tokenizer train --input tests/data/tokenizer/code --ext .txt --vocab-size 500 --special '<|endoftext|>' "
               "--threads 2 --out " + tok);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  REQUIRE(fs::exists(tok));

  std::string text = "def f(x):\n    return x + 1  # done";
  r = run("tokenizer encode --tokenizer " + tok + " --text '" + text + "<|endoftext|>'", false);
  REQUIRE(r.rc == 0);
  auto ids = nlohmann::json::parse(r.out);
  REQUIRE(ids.is_array());
  CHECK(ids.back() == 0);  // the special token got id 0
  std::string csv;
  for (size_t i = 0; i < ids.size(); ++i) csv += (i ? "," : "") + std::to_string(ids[i].get<int>());
  r = run("tokenizer decode --tokenizer " + tok + " --ids " + csv + " --skip-special", false);
  CHECK(r.rc == 0);
  CHECK(r.out == text + "\n");

  std::string file = (dir / "in.py").string();
  std::ofstream(file) << text;
  r = run("tokenizer encode --tokenizer " + tok + " --file " + file + " --no-special", false);
  CHECK(r.rc == 0);
  CHECK(nlohmann::json::parse(r.out).size() == ids.size() - 1);

  // bad input: exit 2 and a message that names the problem
  r = run("tokenizer decode --tokenizer " + tok + " --ids 1,abc");
  CHECK(r.rc == 2);
  CHECK(has(r.out, "\"abc\" is not a token id"));
  r = run("tokenizer decode --tokenizer " + tok + " --ids 99999");
  CHECK(r.rc == 2);
  CHECK(has(r.out, "token id 99999 is not in the vocabulary"));
  r = run("tokenizer encode --tokenizer " + (dir / "missing.json").string() + " --text x");
  CHECK(r.rc == 2);
  CHECK(has(r.out, "no such file"));
  r = run("tokenizer encode --tokenizer " + tok);
  CHECK(r.rc == 2);
  CHECK(has(r.out, "give --text S or --file F"));
  r = run("tokenizer train --input tests/data/tokenizer/code --ext .nothing --out " + (dir / "x.json").string());
  CHECK(r.rc == 2);
  CHECK(has(r.out, "no input files"));

  std::string out = (dir / "bench.json").string();
  r = run("bench tokenizer --tokenizer " + tok + " --input tests/data/tokenizer/code --ext .txt --passes 2 --out " + out);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  r = run("bench tokenizer --tokenizer " + tok + " --input tests/data/tokenizer/code --ext .txt --passes 1 --out " + out);
  REQUIRE(r.rc == 0);
  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  auto results = nlohmann::json::parse(ss.str());
  REQUIRE(results.size() == 2);  // appended, not overwritten
  for (const char* key : {"median_mb_s", "cold_pass_mb_s", "commit", "machine", "command", "date", "bytes", "tokens"})
    CHECK(results[0].contains(key));
  CHECK(results[0]["passes_mb_s"].size() == 2);
  CHECK(results[0]["median_mb_s"].get<double>() > 0);
  fs::remove_all(dir);
}
