// test_bench_ops.cpp — `subq bench ops`'s driver on the CPU at a tiny shape: every op runs forward and
// forward+backward, the result carries the machine measurements, a positive floor, bytes and FLOPs that
// follow the documented cost model, and the cuda implementation is reported as skipped rather than
// timed. Bad shapes and names are usage errors. No timing is asserted.
#include <cmath>

#include "subq/core/error.h"
#include "subq/ops/bench_ops.h"
#include "subq_catch.h"

namespace {
// a tiny fp32 run on the CPU: `iters` timed calls after `warmup`, chunks of 16
subq::ops::BenchOpsOptions tiny_cpu(subq::ops::OpShape shape, int64_t iters, int64_t warmup) {
  subq::ops::BenchOpsOptions o;
  o.shapes = {shape};
  o.device = "cpu";
  o.dtype = "fp32";
  o.iters = iters;
  o.warmup = warmup;
  o.pool = iters;
  o.chunk_size = 16;
  return o;
}
}  // namespace

TEST_CASE("bench ops times every op at a tiny shape on the CPU", "[bench]") {
  auto o = tiny_cpu({1, 40, 2, 8}, 2, 1);
  o.impls = {"reference", "cuda"};
  o.argv = {"subq", "bench", "ops"};
  auto r = subq::ops::bench_ops(o);
  INFO(r.dump(2));
  CHECK(r["bench"] == "ops");
  CHECK(r["command"] == "subq bench ops");
  CHECK(r["measured"]["copy_bandwidth_gbs"].get<double>() > 0);
  CHECK(r["measured"]["matmul_tflops"].get<double>() > 0);
  REQUIRE(r["results"].size() == 8);
  int timed = 0, skipped = 0;
  for (const auto& e : r["results"]) {
    if (e.contains("skipped")) {
      CHECK(e["impl"] == "cuda");
      ++skipped;
      continue;
    }
    ++timed;
    CHECK(e["fwd_ms"]["median"].get<double>() > 0);
    CHECK(e["fwd_bwd_ms"]["n"] == 2);
    CHECK(e["floor_ms"]["fwd"].get<double>() > 0);
    CHECK(e["floor_ms"]["fwd_bwd"].get<double>() > e["floor_ms"]["fwd"].get<double>());
    // linear-attention FLOPs per (row, head, token): 2C(2D) + 4D^2 with C = 16, D = 8; WY work for gated delta
    const double per_tok = 2 * 16 * 16 + 4 * 64 + (e["op"].get<std::string>().rfind("gated_delta", 0) == 0
                                                        ? 2 * 16 * 8 + 2 * 16 * 16 + 2 * 64
                                                        : 0);
    CHECK(e["flops"]["fwd"].get<double>() == per_tok * 1 * 2 * 40);
    CHECK(e["flops"]["fwd_bwd"].get<double>() == 3 * e["flops"]["fwd"].get<double>());
    CHECK(std::isfinite(e["ratio_to_floor"]["fwd_bwd"].get<double>()));
  }
  CHECK(timed == 4);
  CHECK(skipped == 4);
}

TEST_CASE("bench ops --profile adds the profiled call's breakdown to each entry", "[bench]") {
  auto o = tiny_cpu({1, 32, 2, 8}, 1, 0);
  o.ops = {"mlstm"};
  o.profile_top = 4;
  auto r = subq::ops::bench_ops(o);
  INFO(r.dump(2));
  CHECK(r["options"]["profile_top"] == 4);
  REQUIRE(r["results"].size() == 1);
  const auto& p = r["results"][0]["profile"];
  CHECK(p["cuda_activity"] == false);
  CHECK(p["wall_ms"].get<double>() > 0);
  // the CPU operators of one forward+backward call: at most `top`, the first one taking time
  REQUIRE(p["cpu_ops"].size() >= 1);
  CHECK(p["cpu_ops"].size() <= 4);
  CHECK(p["cpu_ops"][0]["ms"].get<double>() > 0);
  CHECK(p["note"].get<std::string>().find("forward+backward") != std::string::npos);
}

TEST_CASE("bench ops rejects bad shapes and names", "[bench]") {
  CHECK_THROWS_AS(subq::ops::parse_op_shape("8,4096,16"), subq::UsageError);
  CHECK_THROWS_AS(subq::ops::parse_op_shape("8,4096,x,128"), subq::UsageError);
  CHECK_THROWS_AS(subq::ops::parse_op_shape("8,0,16,128"), subq::UsageError);
  auto s = subq::ops::parse_op_shape("2,16384,16,128");
  CHECK(s.batch == 2);
  CHECK(s.seq_len == 16384);
  subq::ops::BenchOpsOptions o;
  o.device = "cpu";
  o.ops = {"mlstm2"};
  CHECK_THROWS_AS(subq::ops::bench_ops(o), subq::UsageError);
  o.ops = {"mlstm"};
  o.impls = {"triton"};
  CHECK_THROWS_AS(subq::ops::bench_ops(o), subq::UsageError);
}
