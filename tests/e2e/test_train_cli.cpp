// test_train_cli.cpp — the code-LM pipeline as a user runs it, on a tiny corpus: `subq prepare code`, then
// `subq train` (vocab_size from the tokenizer, metrics, eval with bits per byte, checkpoints), relaunch
// with more steps (resumes), `subq eval --run` / `--checkpoint` (JSON on stdout), and the exit codes of
// resume=never and of bad eval arguments.
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

}  // namespace

TEST_CASE("prepare, train, resume, eval on a tiny corpus", "[cli][train]") {
  fs::path root = fs::temp_directory_path() / ("subq-train-cli-" + std::to_string(::getpid()));
  fs::remove_all(root);
  subq::test::prepare_tiny_corpus(root, 320);

  const std::string data = (root / "data").string();
  const std::string common = "--config configs/quickstart.yaml --set run.out_dir=" + (root / "runs").string() +
                             " --set run.name=tiny --set run.device=cpu --set run.threads=1 --set data.train=" + data + "/train" +
                             " --set data.val=" + data + "/val --set data.tokenizer=" + data + "/tokenizer.json" +
                             " --set data.seq_len=32 --set model.d_model=32 --set model.n_layers=2" +
                             " --set model.n_heads=2 --set train.batch_size=4 --set train.log_every=2" +
                             " --set train.ckpt_every=3 --set eval.every=3 --set eval.batches=2" +
                             " --set eval.batch_size=4 --set schedule.warmup_steps=2";
  auto t1 = run("train " + common + " --set train.steps=6");
  INFO(t1.out);
  REQUIRE(t1.rc == 0);
  const fs::path rd = root / "runs" / "tiny";
  CHECK(fs::exists(rd / "checkpoints" / "step-6" / "COMPLETE"));
  CHECK(fs::exists(rd / "checkpoints" / "step-3" / "COMPLETE"));
  CHECK(has(t1.out, "model.vocab_size = 320"));
  CHECK(has(t1.out, "training done"));
  // the resolved config records the vocabulary taken from the tokenizer
  std::ifstream cfg(rd / "config.yaml");
  std::string cfg_text((std::istreambuf_iterator<char>(cfg)), {});
  CHECK(has(cfg_text, "vocab_size: 320"));
  int logs = 0, evals = 0;
  {
    std::ifstream m(rd / "metrics.jsonl");
    for (std::string line; std::getline(m, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) ++logs;
      if (j.contains("eval_bpb")) {
        ++evals;
        CHECK(j["eval_bpb"].get<double>() > 0);
      }
    }
  }
  CHECK(logs == 3);
  CHECK(evals == 2);

  // relaunch for more steps: resumes from step 6
  auto t2 = run("train " + common + " --set train.steps=8");
  INFO(t2.out);
  REQUIRE(t2.rc == 0);
  CHECK(has(t2.out, "resuming from"));
  CHECK(fs::exists(rd / "checkpoints" / "step-8" / "COMPLETE"));

  // resume=never refuses, exit 2
  auto t3 = run("train " + common + " --set train.steps=10 --set run.resume=never");
  CHECK(t3.rc == 2);
  CHECK(has(t3.out, "run.resume"));

  // eval: JSON on stdout
  auto e = run("eval --run " + rd.string() + " --set eval.batches=0", false);
  INFO(e.out);
  REQUIRE(e.rc == 0);
  auto j = nlohmann::json::parse(e.out);
  CHECK(j["step"] == 8);
  CHECK(j["eval_loss"].get<double>() > 0);
  CHECK(j["eval_ppl"].get<double>() == Approx(std::exp(j["eval_loss"].get<double>())));
  CHECK(j["eval_bpb"].get<double>() > 0);
  CHECK(j["eval_tokens"].get<int64_t>() > 0);
  auto e6 = run("eval --checkpoint " + (rd / "checkpoints" / "step-6").string() + " --set eval.batches=1", false);
  INFO(e6.out);
  REQUIRE(e6.rc == 0);
  auto j6 = nlohmann::json::parse(e6.out);
  CHECK(j6["step"] == 6);
  CHECK(j6["eval_batches"] == 1);

  CHECK(run("eval").rc == 2);
  auto missing = run("eval --run " + (root / "nope").string());
  CHECK(missing.rc == 2);
  CHECK(has(missing.out, "not found"));
  fs::remove_all(root);
}
