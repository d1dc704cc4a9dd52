// test_gdn_cli.cpp — the Gated DeltaNet through the CLI as a user runs it, on a tiny corpus: `subq train`
// from a config that includes configs/models/gdn-neg-tiny.yaml (shrunk by --set), `subq eval`, `subq
// generate` (the O(1)-state decode path from a trained checkpoint) and `subq export --format hf`
// (flash-linear-attention's config.json and names).
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "e2e/cli_run.h"
#include "subq/core/safetensors.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

using subq::test::has;
using subq::test::run;

TEST_CASE("gdn: train, eval, generate and export from the CLI", "[cli][gdn]") {
  fs::path root = fs::temp_directory_path() / ("subq-gdn-cli-" + std::to_string(::getpid()));
  fs::remove_all(root);
  subq::test::prepare_tiny_corpus(root, 300);

  const std::string data = (root / "data").string();
  {
    std::ofstream cfg(root / "gdn.yaml");
    cfg << "include: " << subq::test::source_dir() << "/configs/models/gdn-neg-tiny.yaml\n"
        << "run: {name: gdn, out_dir: " << (root / "runs").string() << ", device: cpu, threads: 1}\n"
        << "data: {task: code, train: " << data << "/train, val: " << data << "/val, tokenizer: " << data
        << "/tokenizer.json, seq_len: 48}\n"
        << "model: {d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, gdn: {head_dim: 8, chunk_size: 16}}\n"
        << "optim: {lr: 3.0e-3}\n"
        << "schedule: {kind: cosine, warmup_steps: 2}\n"
        << "train: {steps: 6, batch_size: 4, log_every: 2, ckpt_every: 3}\n"
        << "eval: {every: 3, batches: 2, batch_size: 4}\n";
  }
  auto t = run("train --config " + (root / "gdn.yaml").string());
  INFO(t.out);
  REQUIRE(t.rc == 0);
  const fs::path rd = root / "runs" / "gdn";
  CHECK(fs::exists(rd / "checkpoints" / "step-6" / "COMPLETE"));
  CHECK(has(t.out, "training done"));
  std::ifstream cy(rd / "config.yaml");
  std::string cfg_text((std::istreambuf_iterator<char>(cy)), {});
  CHECK(has(cfg_text, "arch: gdn"));
  CHECK(has(cfg_text, "allow_neg_eigval: true"));

  auto e = run("eval --run " + rd.string() + " --set eval.batches=0", false);
  INFO(e.out);
  REQUIRE(e.rc == 0);
  auto j = nlohmann::json::parse(e.out);
  CHECK(j["step"] == 6);
  CHECK(j["eval_loss"].get<double>() > 0);
  CHECK(j["eval_bpb"].get<double>() > 0);

  const std::string gen = "generate --run " + rd.string() + " --prompt 'def f(' --max-new-tokens 12 --temperature 0";
  auto g = run(gen, false);  // the text (stdout), not the timing log
  INFO(g.out);
  CHECK(g.rc == 0);
  CHECK(has(g.out, "def f("));
  CHECK(g.out.size() > std::string("def f(").size());
  CHECK(run(gen, false).out == g.out);  // greedy decoding is deterministic

  const fs::path out = root / "hf";
  auto x = run("export --run " + rd.string() + " --format hf --out " + out.string());
  INFO(x.out);
  REQUIRE(x.rc == 0);
  std::ifstream cj(out / "config.json");
  auto c = nlohmann::json::parse(cj);
  CHECK(c["model_type"] == "gated_deltanet");
  CHECK(c["allow_neg_eigval"] == true);
  CHECK(c["head_dim"] == 8);
  CHECK(c["vocab_size"] == 320);  // the tokenizer's 300 ids rounded up to a multiple of 64
  CHECK(c["eos_token_id"].is_number());
  auto st = subq::load_safetensors((out / "model.safetensors").string());
  CHECK(st.tensors.count("model.layers.1.attn.dt_bias"));
  CHECK(fs::exists(out / "tokenizer.json"));
  fs::remove_all(root);
}
