// test_dist_cli.cpp — data-parallel training through the CLI on the CPU (store backend), as a user runs it:
//  * `subq launch --nproc 2 -- train` with 2 ranks x batch 2 gives the weights, losses, token counts and
//    eval of `subq train` with 1 rank x batch 4 (fp32 tolerance: rtol 1e-4, atol 1e-5), with and without ZeRO-1; metrics say
//    the world size and the global batch; only rank 0 writes the run directory;
//  * checkpoints resume on a different number of ranks: 2 ranks (ZeRO-1) -> 1 rank and 1 -> 2 reach the
//    weights of an uninterrupted 1-rank run;
//  * faults: a SIGKILLed rank makes the survivor exit non-zero naming it, under the launcher and under a
//    torchrun-style environment (rank 1 killed: heartbeat; rank 0, the store's host, killed: lost store),
//    within dist.timeout_s = 5 s; a relaunch resumes from the last complete checkpoint.
// Every process has a deadline and is SIGKILLed past it, so a failure cannot hang the suite.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "e2e/dist_procs.h"
#include "subq/train/checkpoint.h"

namespace fs = std::filesystem;
using subq::test::has;
using subq::test::Proc;
using subq::test::run;

namespace {

struct Fixture {
  fs::path root;
  std::string common;
  Fixture() {
    root = fs::temp_directory_path() / ("subq-dist-cli-" + std::to_string(::getpid()));
    fs::remove_all(root);
    subq::test::prepare_tiny_corpus(root);
    const std::string data = (root / "data").string();
    common = "--config configs/quickstart.yaml --set run.out_dir=" + (root / "runs").string() +
             " --set run.device=cpu --set run.threads=1 --set run.dtype=fp32 --set data.train=" + data + "/train" +
             " --set data.val=" + data + "/val --set data.tokenizer=" + data + "/tokenizer.json" +
             " --set data.seq_len=32 --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2" +
             " --set train.log_every=1 --set train.ckpt_every=0 --set eval.every=0 --set eval.batches=2" +
             " --set eval.batch_size=4 --set schedule.kind=constant --set schedule.warmup_steps=2";
  }
  ~Fixture() { fs::remove_all(root); }
  fs::path run_dir(const std::string& name) const { return root / "runs" / name; }
  std::string ckpt(const std::string& name, int step) const {
    return (run_dir(name) / "checkpoints" / ("step-" + std::to_string(step))).string();
  }
};

std::vector<nlohmann::json> metrics_of(const fs::path& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream f(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// pid of rank `rank` as the launcher logged it ("rank 1: pid 4242")
pid_t launched_pid(const std::string& out, int rank) {
  std::smatch m;
  std::regex re("rank " + std::to_string(rank) + ": pid ([0-9]+)");
  if (!std::regex_search(out, m, re)) return -1;
  return static_cast<pid_t>(std::stol(m[1].str()));
}

bool wait_for_step(Proc& p, const fs::path& run_dir, int64_t step, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (subq::test::last_logged_step(run_dir) >= step) return true;
    if (!p.running()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

}  // namespace

TEST_CASE("2 ranks x B/2 == 1 rank x B through `subq launch` (all-reduce and ZeRO-1)", "[cli][dist]") {
  Fixture fx;
  const std::string steps = " --set train.steps=4";
  auto single = run("train " + fx.common + steps + " --set run.name=single --set train.batch_size=4");
  INFO(single.out);
  REQUIRE(single.rc == 0);
  auto dp = run("launch --nproc 2 -- train " + fx.common + steps + " --set run.name=dp2 --set train.batch_size=2");
  INFO(dp.out);
  REQUIRE(dp.rc == 0);
  CHECK(has(dp.out, "data parallel: 2 processes (subq launch), backend store"));
  CHECK(has(dp.out, "global batch 4 sequences"));
  CHECK(has(dp.out, "all 2 rank(s) finished"));
  auto z = run("launch --nproc 2 -- train " + fx.common + steps +
               " --set run.name=dp2z --set train.batch_size=2 --set dist.zero1=true --set dist.bucket_mb=0.01");
  INFO(z.out);
  REQUIRE(z.rc == 0);
  CHECK(has(z.out, "ZeRO-1"));

  for (const char* name : {"dp2", "dp2z"}) {
    INFO(name);
    CHECK(subq::test::weights_distance(fx.ckpt(name, 4), fx.ckpt("single", 4), 1e-4, 1e-5) <= 1.0);
    auto a = metrics_of(fx.run_dir("single")), b = metrics_of(fx.run_dir(name));
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].contains("loss")) {
        CHECK(b[i]["loss"].get<double>() == Approx(a[i]["loss"].get<double>()).epsilon(1e-5));
        CHECK(b[i]["grad_norm"].get<double>() == Approx(a[i]["grad_norm"].get<double>()).epsilon(1e-4));
        CHECK(b[i]["tokens"] == a[i]["tokens"]);
        CHECK(b[i]["world"] == 2);
        CHECK(b[i]["global_batch"] == 4);
        CHECK(a[i]["world"] == 1);
        CHECK(a[i]["global_batch"] == 4);
      } else {  // the final eval: the two ranks' halves summed
        CHECK(b[i]["eval_loss"].get<double>() == Approx(a[i]["eval_loss"].get<double>()).epsilon(1e-4));
        CHECK(b[i]["eval_tokens"] == a[i]["eval_tokens"]);
        CHECK(b[i]["eval_bytes"] == a[i]["eval_bytes"]);
      }
    }
    // the optimizer state is the full one, whatever the sharding
    auto so = subq::load_safetensors(fx.ckpt("single", 4) + "/optimizer.safetensors").tensors;
    auto dpo = subq::load_safetensors(fx.ckpt(name, 4) + "/optimizer.safetensors").tensors;
    CHECK(so.size() == dpo.size());
    auto st = subq::train::read_trainer_state(fx.ckpt(name, 4));
    CHECK(st["world"] == 2);
    CHECK(st["rng_ranks"].size() == 2);
  }
  // only rank 0 wrote: one launch recorded in run.json, no stray temporary checkpoints
  auto runs = nlohmann::json::parse(std::ifstream(fx.run_dir("dp2") / "run.json"));
  CHECK(runs.size() == 1);
  for (const auto& e : fs::directory_iterator(fx.run_dir("dp2") / "checkpoints"))
    CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("checkpoints resume on a different number of ranks", "[cli][dist][resume]") {
  Fixture fx;
  const std::string c = fx.common + " --set train.ckpt_every=3";
  auto straight = run("train " + c + " --set run.name=straight --set train.batch_size=4 --set train.steps=6");
  INFO(straight.out);
  REQUIRE(straight.rc == 0);
  // 2 ranks (ZeRO-1) for 3 steps, then 1 rank to 6
  auto a1 = run("launch --nproc 2 -- train " + c +
                " --set run.name=two_then_one --set train.batch_size=2 --set dist.zero1=true --set train.steps=3");
  INFO(a1.out);
  REQUIRE(a1.rc == 0);
  auto a2 = run("train " + c + " --set run.name=two_then_one --set train.batch_size=4 --set train.steps=6");
  INFO(a2.out);
  REQUIRE(a2.rc == 0);
  CHECK(has(a2.out, "resuming from"));
  CHECK(has(a2.out, "saved with 2 data-parallel ranks, resuming with 1"));
  // 1 rank for 3 steps, then 2 ranks (ZeRO-1) to 6
  auto b1 = run("train " + c + " --set run.name=one_then_two --set train.batch_size=4 --set train.steps=3");
  INFO(b1.out);
  REQUIRE(b1.rc == 0);
  auto b2 = run("launch --nproc 2 -- train " + c +
                " --set run.name=one_then_two --set train.batch_size=2 --set dist.zero1=true --set train.steps=6");
  INFO(b2.out);
  REQUIRE(b2.rc == 0);
  CHECK(has(b2.out, "resuming from"));
  CHECK(subq::test::weights_distance(fx.ckpt("two_then_one", 6), fx.ckpt("straight", 6), 1e-4, 1e-5) <= 1.0);
  CHECK(subq::test::weights_distance(fx.ckpt("one_then_two", 6), fx.ckpt("straight", 6), 1e-4, 1e-5) <= 1.0);
}

TEST_CASE("a killed rank stops the others with its name; a relaunch resumes", "[cli][dist][fault]") {
  Fixture fx;
  // dist.timeout_s = 5: the survivors must notice within seconds
  const std::string c = fx.common + " --set train.batch_size=2 --set train.steps=100000 --set train.ckpt_every=2" +
                        " --set dist.timeout_s=5";

  SECTION("under subq launch") {
    Proc launcher("launch --nproc 2 --grace-s 30 -- train " + c + " --set run.name=killed", {},
                  (fx.root / "launch.log").string());
    REQUIRE(wait_for_step(launcher, fx.run_dir("killed"), 3, 120));
    const pid_t victim = launched_pid(launcher.output(), 1);
    REQUIRE(victim > 0);
    ::kill(victim, SIGKILL);
    REQUIRE(launcher.wait(60));
    const std::string out = launcher.output();
    INFO(out);
    CHECK(launcher.exit_code() != 0);
    CHECK(has(out, "rank 1 (pid " + std::to_string(victim) + ") was killed by signal 9"));
    CHECK(has(out, "launch failed"));
    // relaunch: resumes from the last complete checkpoint and finishes
    auto last = subq::train::latest_checkpoint(fx.run_dir("killed").string());
    REQUIRE(last);
    const std::string until = " --set train.steps=" + std::to_string(last->step + 2);
    auto again = run("launch --nproc 2 -- train " + fx.common + " --set train.batch_size=2 --set run.name=killed" + until);
    INFO(again.out);
    CHECK(again.rc == 0);
    CHECK(has(again.out, "resuming from"));
  }

  SECTION("torchrun-style environment, rank 1 killed") {
    const int port = subq::test::free_port();
    Proc r0("train " + c + " --set run.name=env1", subq::test::rank_env(0, 2, port), (fx.root / "r0.log").string());
    Proc r1("train " + c + " --set run.name=env1", subq::test::rank_env(1, 2, port), (fx.root / "r1.log").string());
    REQUIRE(wait_for_step(r0, fx.run_dir("env1"), 3, 120));
    r1.kill_now();
    REQUIRE(r0.wait(60));
    INFO(r0.output());
    CHECK(r0.exit_code() == 1);
    CHECK(has(r0.output(), "rank 1"));
    CHECK(has(r0.output(), "relaunch resumes from the last complete checkpoint"));
  }

  SECTION("torchrun-style environment, rank 0 (the store's host) killed") {
    const int port = subq::test::free_port();
    Proc r0("train " + c + " --set run.name=env0", subq::test::rank_env(0, 2, port), (fx.root / "r0.log").string());
    Proc r1("train " + c + " --set run.name=env0", subq::test::rank_env(1, 2, port), (fx.root / "r1.log").string());
    REQUIRE(wait_for_step(r0, fx.run_dir("env0"), 3, 120));
    r0.kill_now();
    REQUIRE(r1.wait(60));
    INFO(r1.output());
    CHECK(r1.exit_code() == 1);
    CHECK(has(r1.output(), "rank 0"));
  }
}
