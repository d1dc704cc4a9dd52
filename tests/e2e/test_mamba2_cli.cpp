// test_mamba2_cli.cpp — Mamba-2 through the CLI as a user runs it, on a tiny corpus: `subq prepare code`,
// `subq train` with model.arch=mamba2 (packed documents, checkpoints), then `subq eval`, `subq generate`
// (the O(1)-state decoder on a trained checkpoint, deterministic at temperature 0) and `subq export
// --format hf` (a Mamba2ForCausalLM folder).
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

using subq::test::has;
using subq::test::run;

TEST_CASE("mamba2: prepare, train, eval, generate, export", "[cli][mamba2]") {
  fs::path root = fs::temp_directory_path() / ("subq-mamba2-cli-" + std::to_string(::getpid()));
  fs::remove_all(root);
  subq::test::prepare_tiny_corpus(root, 300);

  const std::string data = (root / "data").string();
  const fs::path rd = root / "runs" / "m2";
  const std::string args =
      "--config configs/quickstart.yaml --set run.out_dir=" + (root / "runs").string() +
      " --set run.name=m2 --set run.device=cpu --set run.threads=1 --set data.train=" + data + "/train" +
      " --set data.val=" + data + "/val --set data.tokenizer=" + data + "/tokenizer.json" +
      " --set data.seq_len=48 --set model.arch=mamba2 --set model.d_model=32 --set model.n_layers=2" +
      " --set model.tie_embeddings=true --set model.mamba2.d_state=8 --set model.mamba2.head_dim=16" +
      " --set model.mamba2.chunk_size=16 --set train.batch_size=4 --set train.steps=6 --set train.log_every=2" +
      " --set train.ckpt_every=3 --set eval.every=3 --set eval.batches=2 --set eval.batch_size=4" +
      " --set schedule.warmup_steps=2";
  auto t = run("train " + args);
  INFO(t.out);
  REQUIRE(t.rc == 0);
  CHECK(has(t.out, "training done"));
  CHECK(fs::exists(rd / "checkpoints" / "step-6" / "COMPLETE"));
  {
    std::ifstream m(rd / "metrics.jsonl");
    int losses = 0;
    for (std::string line; std::getline(m, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) {
        ++losses;
        CHECK(std::isfinite(j["loss"].get<double>()));
      }
    }
    CHECK(losses == 3);
  }

  auto e = run("eval --run " + rd.string() + " --set eval.batches=2", false);
  INFO(e.out);
  REQUIRE(e.rc == 0);
  auto j = nlohmann::json::parse(e.out);
  CHECK(j["step"] == 6);
  CHECK(j["eval_bpb"].get<double>() > 0);

  const std::string gen = "generate --run " + rd.string() + " --prompt 'def f(' --temperature 0 --max-new-tokens 12";
  auto g = run(gen, false);
  INFO(g.out);
  REQUIRE(g.rc == 0);
  CHECK(has(g.out, "def f("));
  CHECK(run(gen, false).out == g.out);  // greedy decoding is deterministic
  auto s = run("generate --run " + rd.string() + " --prompt 'def' --num-samples 2 --max-new-tokens 6 --seed 3", false);
  CHECK(s.rc == 0);

  const fs::path out = root / "hf";
  auto x = run("export --format hf --run " + rd.string() + " --out " + out.string());
  INFO(x.out);
  REQUIRE(x.rc == 0);
  std::ifstream cf(out / "config.json");
  auto cfg = nlohmann::json::parse(cf);
  CHECK(cfg["architectures"][0] == "Mamba2ForCausalLM");
  CHECK(cfg["model_type"] == "mamba2");
  CHECK(cfg["num_heads"] == 4);
  CHECK(cfg["state_size"] == 8);
  CHECK(cfg["vocab_size"] == 320);  // the tokenizer's 300 ids rounded up to a multiple of 64 by subq train
  CHECK(fs::exists(out / "model.safetensors"));
  CHECK(fs::exists(out / "tokenizer.json"));
  fs::remove_all(root);
}
