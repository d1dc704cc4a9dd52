// test_run_assets.cpp — finding a run's tokenizer from another working directory (through the launch
// directories run.json records), the run directory of a checkpoint, clear errors when the tokenizer is
// nowhere, and the undecodable-id list used to keep generation decodable.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "subq/core/error.h"
#include "subq/eval/run_assets.h"
#include "subq_catch.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace {
using subq::test::TempDir;
}  // namespace

TEST_CASE("a run's relative paths resolve against its recorded launch directories", "[assets]") {
  TempDir t;
  fs::create_directories(t.path / "launch/data");
  fs::create_directories(t.path / "runs/r1/checkpoints/step-10");
  subq::data::BpeTrainOptions bo;
  bo.vocab_size = 280;
  bo.show_progress = false;
  auto tok = subq::data::train_bpe_texts({"def f(x):\n    return x\n", "int main() { return 0; }\n"}, bo);
  tok.save((t.path / "launch/data/tok.json").string());
  std::ofstream(t.path / "runs/r1/run.json") << R"([{"cwd": "/nonexistent"}, {"cwd": ")" << (t.path / "launch").string()
                                          << R"("}])";
  const std::string run = (t.path / "runs/r1").string();

  CHECK(subq::eval::resolve_run_path("data/tok.json", run) == (t.path / "launch/data/tok.json").string());
  CHECK(subq::eval::resolve_run_path("data/missing.json", run).empty());
  CHECK(subq::eval::resolve_run_path((t.path / "launch/data/tok.json").string(), "") ==
        (t.path / "launch/data/tok.json").string());

  subq::RunConfig cfg;
  cfg.data.tokenizer = "data/tok.json";
  std::string used;
  auto loaded = subq::eval::tokenizer_of_run(cfg, run, "", &used);
  CHECK(used == (t.path / "launch/data/tok.json").string());
  CHECK(loaded.vocab_size() == tok.vocab_size());

  cfg.data.tokenizer = "data/nope.json";
  try {
    subq::eval::tokenizer_of_run(cfg, run, "");
    FAIL("no error");
  } catch (const subq::InputError& e) {
    std::string w = e.what();
    CHECK(w.find("data/nope.json") != std::string::npos);
    CHECK(w.find("--tokenizer") != std::string::npos);
    CHECK(w.find((t.path / "launch").string()) != std::string::npos);  // says where it looked
  }
  CHECK_THROWS_AS(subq::eval::tokenizer_of_run(cfg, run, (t.path / "x.json").string()), subq::InputError);
  // --tokenizer wins over the config.
  CHECK(subq::eval::tokenizer_of_run(cfg, run, (t.path / "launch/data/tok.json").string()).vocab_size() ==
        tok.vocab_size());

  CHECK(fs::path(subq::eval::run_dir_of_checkpoint((t.path / "runs/r1/checkpoints/step-10/").string())) ==
        fs::absolute(t.path / "runs/r1"));
  CHECK(subq::eval::run_dir_of_checkpoint((t.path / "launch/data").string()).empty());

  CHECK(subq::eval::undecodable_ids(tok, tok.vocab_size()).empty());
}
