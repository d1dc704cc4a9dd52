// test_bench_train.cpp — `subq bench train`'s driver on the CPU with a tiny config: it runs the trainer
// for warm-up + measured steps and returns a well-formed result (positive throughput and step time, no
// MFU on a CPU, peak RSS, commit, machine, setup), and it leaves nothing behind in its scratch directory.
// No timing is asserted.
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "subq/core/error.h"
#include "subq/train/bench_train.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

TEST_CASE("bench train runs the trainer on synthetic tokens and reports", "[bench]") {
  subq::RunConfig cfg;
  cfg.run.device = "cpu";
  cfg.run.dtype = "fp32";
  cfg.run.threads = 1;
  cfg.model.arch = "transformer";
  cfg.model.vocab_size = 96;
  cfg.model.d_model = 32;
  cfg.model.n_layers = 2;
  cfg.model.n_heads = 2;
  cfg.model.max_seq_len = 64;
  cfg.data.seq_len = 32;
  cfg.train.batch_size = 2;
  cfg.train.grad_accum = 2;
  fs::path work = fs::temp_directory_path() / ("subq-bench-test-" + std::to_string(::getpid()));
  fs::create_directories(work);

  subq::train::BenchTrainOptions o;
  o.steps = 3;
  o.warmup = 1;
  o.work_dir = work.string();
  o.argv = {"subq", "bench", "train"};
  auto r = subq::train::bench_train(cfg, o);
  INFO(r.dump(2));
  CHECK(r["bench"] == "train");
  CHECK(r["command"] == "subq bench train");
  CHECK(r["commit"].is_string());
  CHECK(r["date"].get<std::string>().size() == 20);
  CHECK(r["machine"]["device"] == "cpu");
  CHECK_FALSE(r["machine"]["cpu"].get<std::string>().empty());
  CHECK(r["setup"]["tokens_per_step"] == 2 * 32 * 2);
  CHECK(r["setup"]["measured_steps"] == 3);
  CHECK(r["model"]["params"].get<int64_t>() > 0);
  CHECK(r["model"]["flops_per_token"].get<double>() > 6.0 * 32 * 32);
  CHECK(r["tokens_per_s"]["median"].get<double>() > 0);
  CHECK(r["tokens_per_s"]["min"].get<double>() <= r["tokens_per_s"]["median"].get<double>());
  CHECK(r["step_time_s"]["median"].get<double>() > 0);
  CHECK(r["mfu"].is_null());  // no peak FLOP/s for a CPU
  CHECK(r["achieved_tflops"].get<double>() > 0);
  CHECK(r["memory"]["peak_rss_gib"].get<double>() > 0);
  CHECK(std::isfinite(r["loss"]["last"].get<double>()));
  CHECK(r["config"].get<std::string>().find("d_model: 32") != std::string::npos);
  CHECK(fs::is_empty(work));  // the scratch run directory is gone

  // --profile: one extra, profiled step; the measured steps and their count are unchanged, and the
  // profile names the CPU operators of a training step (no device kernels on a CPU)
  o.profile_top = 5;
  auto rp = subq::train::bench_train(cfg, o);
  INFO(rp.dump(2));
  CHECK(rp["setup"]["measured_steps"] == 3);
  REQUIRE(rp.contains("profile"));
  CHECK_FALSE(rp["profile"]["cuda_activity"].get<bool>());
  CHECK(rp["profile"]["wall_ms"].get<double>() > 0);
  CHECK(rp["profile"]["kernels"].empty());
  const auto& ops = rp["profile"]["cpu_ops"];
  REQUIRE(ops.size() == 5);
  CHECK(ops[0]["ms"].get<double>() >= ops[4]["ms"].get<double>());
  bool saw_aten = false;
  for (const auto& e : ops) saw_aten = saw_aten || e["name"].get<std::string>().rfind("aten::", 0) == 0 ||
                                       e["name"].get<std::string>().find("autograd") != std::string::npos;
  CHECK(saw_aten);
  CHECK(fs::is_empty(work));
  o.profile_top = -1;
  CHECK_THROWS_AS(subq::train::bench_train(cfg, o), subq::UsageError);
  o.profile_top = 0;
  CHECK_FALSE(subq::train::bench_train(cfg, o).contains("profile"));
  fs::remove_all(work);

  o.warmup = 0;
  CHECK_THROWS_AS(subq::train::bench_train(cfg, o), subq::UsageError);
  o.warmup = 1;
  cfg.model.vocab_size = 0;
  CHECK_THROWS_AS(subq::train::bench_train(cfg, o), subq::ConfigError);
}
