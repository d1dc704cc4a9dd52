// test_synthetic_cli.cpp — the synthetic suite as a user runs it: `subq train` on parity with a task file
// and a model file layered by two --config options (vocabulary from the task, no data files, accuracy in
// the periodic evaluation), `subq eval --run` / `--checkpoint` writing the accuracy table and JSON, and
// the exit code and message of a model.max_seq_len that cannot hold the eval lengths.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using subq::test::has;
using subq::test::run;

TEST_CASE("train parity, then eval accuracy per length", "[cli][synthetic]") {
  const fs::path root = fs::temp_directory_path() / ("subq-synthetic-cli-" + std::to_string(::getpid()));
  fs::remove_all(root);
  const std::string common =
      "--config configs/synthetic/parity.yaml --config configs/synthetic/models/transformer.yaml"
      " --set run.out_dir=" + (root / "runs").string() +
      " --set run.device=cpu --set run.threads=1 --set model.d_model=32 --set model.n_heads=2"
      " --set model.max_seq_len=256 --set data.synthetic.train_len=16 --set 'data.synthetic.eval_lens=[16,64]'"
      " --set data.synthetic.eval_examples=24 --set train.batch_size=8 --set train.log_every=2"
      " --set train.ckpt_every=3 --set eval.every=3 --set eval.batch_size=8 --set schedule.warmup_steps=2";
  auto t = run("train " + common + " --set train.steps=6");
  INFO(t.out);
  REQUIRE(t.rc == 0);
  CHECK(has(t.out, "model.vocab_size = 4 (synthetic task parity)"));
  CHECK(has(t.out, "seq_acc@16"));
  const fs::path rd = root / "runs" / "parity-transformer";  // the two files' names
  REQUIRE(fs::exists(rd / "checkpoints" / "step-6" / "COMPLETE"));
  int evals = 0;
  {
    std::ifstream m(rd / "metrics.jsonl");
    for (std::string line; std::getline(m, line);) {
      auto j = nlohmann::json::parse(line);
      if (!j.contains("eval_loss")) continue;
      ++evals;
      REQUIRE(j.contains("eval_seq_acc_16"));
      CHECK(j["eval_tokens"] == 24);  // one answer per parity sequence
    }
  }
  CHECK(evals == 2);
  std::ifstream cfg_file(rd / "config.yaml");
  std::string cfg((std::istreambuf_iterator<char>(cfg_file)), {});
  CHECK(has(cfg, "vocab_size: 4"));
  CHECK(has(cfg, "seq_len: 16"));

  // eval --run: a table on stdout, JSON in the run directory
  auto e = run("eval --run " + rd.string(), false);
  INFO(e.out);
  REQUIRE(e.rc == 0);
  CHECK(has(e.out, "seq_acc"));
  CHECK(has(e.out, "synthetic parity: transformer, step 6"));
  const fs::path jp = rd / "eval" / "synthetic-step-6.json";
  REQUIRE(fs::exists(jp));
  std::ifstream jf(jp);
  auto j = nlohmann::json::parse(jf);
  CHECK(j["task"] == "parity");
  CHECK(j["step"] == 6);
  CHECK(j["arch"] == "transformer");
  REQUIRE(j["lengths"].size() == 2);
  CHECK(j["lengths"][0]["len"] == 16);
  CHECK(j["lengths"][1]["len"] == 64);
  for (const auto& l : j["lengths"]) {
    CHECK(l["examples"] == 24);
    CHECK(l["targets"] == 24);
    for (const char* k : {"seq_acc", "tok_acc", "final_acc"}) {
      CHECK(l[k].get<double>() >= 0.0);
      CHECK(l[k].get<double>() <= 1.0);
    }
    // one answer per sequence: the three accuracies coincide
    CHECK(l["seq_acc"] == l["tok_acc"]);
    CHECK(l["seq_acc"] == l["final_acc"]);
  }

  // eval --checkpoint with other lengths
  auto e3 = run("eval --checkpoint " + (rd / "checkpoints" / "step-3").string() +
                " --set 'data.synthetic.eval_lens=[8]' --set data.synthetic.eval_len_mode=range");
  INFO(e3.out);
  REQUIRE(e3.rc == 0);
  std::ifstream j3f(rd / "eval" / "synthetic-step-3.json");
  auto j3 = nlohmann::json::parse(j3f);
  REQUIRE(j3["lengths"].size() == 1);
  CHECK(j3["lengths"][0]["min_len"] == 2);
  CHECK(j3["lengths"][0]["max_len"] == 8);
  CHECK(j3["eval_len_mode"] == "range");

  // eval lengths beyond model.max_seq_len: exit 2, naming the keys
  auto bad = run("eval --run " + rd.string() + " --set 'data.synthetic.eval_lens=[16,512]'");
  CHECK(bad.rc == 2);
  CHECK(has(bad.out, "model.max_seq_len"));
  CHECK(has(bad.out, "512"));
  auto bad_train = run("train " + common + " --set run.name=short --set model.max_seq_len=32 --set train.steps=1");
  CHECK(bad_train.rc == 2);
  CHECK(has(bad_train.out, "model.max_seq_len"));
  fs::remove_all(root);
}

TEST_CASE("every task file layers with a model file", "[cli][synthetic]") {
  const fs::path root = fs::temp_directory_path() / ("subq-synthetic-dry-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto c = run("config --check configs/synthetic/s5.yaml --check configs/synthetic/models/gdn_neg.yaml --print");
  INFO(c.out);
  REQUIRE(c.rc == 0);
  CHECK(has(c.out, "allow_neg_eigval: true"));
  CHECK(has(c.out, "task: s5"));
  CHECK(has(c.out, "s5-gdn_neg"));
  auto d = run("train --config configs/synthetic/anbn.yaml --config configs/synthetic/models/xlstm11.yaml --dry-run"
               " --set run.out_dir=" + root.string());
  INFO(d.out);
  REQUIRE(d.rc == 0);
  std::ifstream f(root / "anbn-xlstm11" / "config.yaml");
  std::string cfg((std::istreambuf_iterator<char>(f)), {});
  CHECK(has(cfg, "arch: xlstm"));
  CHECK(has(cfg, "1:1"));
  CHECK(has(cfg, "vocab_size: 4"));
  fs::remove_all(root);
}
