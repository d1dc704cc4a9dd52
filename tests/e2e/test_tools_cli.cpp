// test_tools_cli.cpp — the run tools as a user runs them: `subq plot`, `subq generate`, `subq export
// --format hf` and `subq bench train` on a tiny run (a seeded random Transformer saved as a checkpoint
// with a small trained tokenizer), their outputs and exit codes (0 ok, 2 bad usage/input).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "subq/core/config.h"
#include "subq/core/fs.h"
#include "subq/core/run_config.h"
#include "subq/data/tokenizer.h"
#include "subq/models/model.h"
#include "subq/train/checkpoint.h"
#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

namespace {

using subq::test::binary;
using subq::test::has;
using subq::test::Result;
using subq::test::run;

struct TinyRun {
  fs::path root, run_dir;
  TinyRun() {
    root = fs::temp_directory_path() / ("subq-tools-e2e-" + std::to_string(::getpid()));
    fs::create_directories(root);
    run_dir = root / "runs/tiny";
    subq::data::BpeTrainOptions bo;
    bo.vocab_size = 320;
    bo.show_progress = false;
    auto tok = subq::data::train_bpe_texts(
        {"def add(a, b):\n    return a + b\n", "def mul(a, b):\n    return a * b\n", "print(add(1, 2))\n"}, bo);
    tok.save((root / "tokenizer.json").string());
    subq::RunConfig cfg;
    cfg.run.name = "tiny";
    cfg.run.out_dir = (root / "runs").string();
    cfg.run.device = "cpu";
    cfg.data.tokenizer = (root / "tokenizer.json").string();
    cfg.model.vocab_size = tok.vocab_size();
    cfg.model.d_model = 32;
    cfg.model.n_layers = 2;
    cfg.model.n_heads = 4;
    cfg.model.max_seq_len = 64;
    torch::manual_seed(3);
    auto model = subq::models::create_model(cfg.model);
    nlohmann::json st = {{"config", subq::config::to_yaml(cfg)}, {"tokens", 0}};
    subq::train::save_checkpoint(run_dir.string(), 5, *model, nullptr, st, 1);
    subq::fsx::write_file_atomic((run_dir / "config.yaml").string(), subq::config::to_yaml(cfg));
  }
  ~TinyRun() { fs::remove_all(root); }
};

}  // namespace

TEST_CASE("plot: report for a run, clear errors otherwise", "[cli][tools]") {
  TinyRun t;
  auto missing = run("plot '" + t.run_dir.string() + "'");
  CHECK(missing.rc == 2);
  CHECK(has(missing.out, "no metrics file"));
  std::ofstream(t.run_dir / "metrics.jsonl") << "{\"step\":1,\"loss\":5.0,\"lr\":0.001,\"tokens_per_s\":100}\n"
                                             << "{\"step\":2,\"loss\":4.5,\"lr\":0.001,\"tokens_per_s\":110}\n";
  auto ok = run("plot '" + t.run_dir.string() + "'");
  CHECK(ok.rc == 0);
  CHECK(fs::exists(t.run_dir / "report.html"));
  auto custom = run("plot '" + t.run_dir.string() + "' --out '" + (t.root / "r.html").string() + "'");
  CHECK(custom.rc == 0);
  CHECK(fs::exists(t.root / "r.html"));
  CHECK(run("plot").rc == 2);
}

TEST_CASE("generate: prompt + completion on stdout, usage errors exit 2", "[cli][tools]") {
  TinyRun t;
  const std::string run_arg = "--run '" + t.run_dir.string() + "'";
  auto g = run("generate " + run_arg + " --prompt 'def add' --temperature 0 --max-new-tokens 8", false);
  INFO(g.out);
  CHECK(g.rc == 0);
  CHECK(g.out.rfind("def add", 0) == 0);
  CHECK(g.out.size() > std::string("def add\n").size());
  // Greedy is deterministic; so is sampling per seed.
  CHECK(run("generate " + run_arg + " --prompt 'def add' --temperature 0 --max-new-tokens 8", false).out == g.out);
  auto s1 = run("generate " + run_arg + " --prompt 'def' --num-samples 2 --max-new-tokens 6 --seed 5", false);
  CHECK(s1.rc == 0);
  CHECK(has(s1.out, "--- sample 2/2 ---"));
  CHECK(run("generate " + run_arg + " --prompt 'def' --num-samples 2 --max-new-tokens 6 --seed 5", false).out == s1.out);
  auto timing = run("generate " + run_arg + " --prompt 'def' --max-new-tokens 4");
  CHECK(has(timing.out, "tok/s"));
  // Through --checkpoint, from another working directory (the tokenizer path is absolute here).
  auto c = run("generate --checkpoint '" + (t.run_dir / "checkpoints/step-5").string() +
                   "' --prompt 'def add' --temperature 0 --max-new-tokens 8",
               false);
  CHECK(c.out == g.out);

  CHECK(run("generate " + run_arg).rc == 2);                                      // no prompt
  CHECK(run("generate --prompt x").rc == 2);                                      // no run
  CHECK(run("generate " + run_arg + " --prompt x --top-p 0").rc == 2);            // bad option
  CHECK(run("generate --run '" + (t.root / "nope").string() + "' --prompt x").rc == 2);  // no checkpoint
  CHECK(run("generate " + run_arg + " --prompt x --tokenizer /nonexistent.json").rc == 2);
}

TEST_CASE("export --format hf: folder, refusal to overwrite, --force", "[cli][tools]") {
  TinyRun t;
  const std::string out = (t.root / "hf").string();
  auto e = run("export --format hf --run '" + t.run_dir.string() + "' --out '" + out + "'");
  INFO(e.out);
  CHECK(e.rc == 0);
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"})
    CHECK(fs::exists(fs::path(out) / f));
  auto again = run("export --format hf --run '" + t.run_dir.string() + "' --out '" + out + "'");
  CHECK(again.rc == 2);
  CHECK(has(again.out, "--force"));
  CHECK(run("export --format hf --run '" + t.run_dir.string() + "' --out '" + out + "' --force --dtype bf16").rc == 0);
  CHECK(has(subq::fsx::read_file(out + "/config.json"), "bfloat16"));
  CHECK(run("export --format onnx --run '" + t.run_dir.string() + "' --out x").rc == 2);
}

TEST_CASE("bench train: tiny config on the CPU writes a result file", "[cli][tools]") {
  fs::path out = fs::temp_directory_path() / ("subq-bench-e2e-" + std::to_string(::getpid())) / "r.json";
  auto b = run("bench train --config configs/quickstart.yaml --set model.vocab_size=64 --set model.d_model=32 "
               "--set model.n_layers=1 --set model.n_heads=2 --set data.seq_len=16 --set train.batch_size=2 "
               "--set run.device=cpu --set run.threads=1 --steps 2 --warmup 1 --out '" +
               out.string() + "'");
  INFO(b.out);
  CHECK(b.rc == 0);
  REQUIRE(fs::exists(out));
  auto j = nlohmann::json::parse(subq::fsx::read_file(out.string()));
  CHECK(j["tokens_per_s"]["median"].get<double>() > 0);
  CHECK(j["setup"]["measured_steps"] == 2);
  CHECK(has(j["command"].get<std::string>(), "bench train"));
  fs::remove_all(out.parent_path());
  CHECK(run("bench train --config configs/quickstart.yaml --set run.device=cpu --set data.tokenizer=/nonexistent/tok.json --steps 2").rc == 2);  // vocab 0, no tokenizer
}

TEST_CASE("bench ops: --profile on the CPU writes each entry's profile; a negative count is a usage error",
          "[cli][tools]") {
  fs::path out = fs::temp_directory_path() / ("subq-bench-ops-e2e-" + std::to_string(::getpid())) / "o.json";
  auto b = run("bench ops --op ssd --shape 1,32,2,8 --device cpu --dtype fp32 --iters 1 --warmup 0 --profile 3 --out '" +
               out.string() + "'");
  INFO(b.out);
  CHECK(b.rc == 0);
  REQUIRE(fs::exists(out));
  auto j = nlohmann::json::parse(subq::fsx::read_file(out.string()));
  REQUIRE(j["results"].size() == 1);
  CHECK(j["results"][0]["profile"]["cpu_ops"].size() <= 3);
  CHECK(j["options"]["profile_top"] == 3);
  fs::remove_all(out.parent_path());
  auto bad = run("bench ops --profile -1");
  CHECK(bad.rc == 2);
  CHECK(has(bad.out, "--profile"));
}
