// cmd_bench_ops.cpp — `subq bench ops [--op NAME ...] [--impl reference|cuda ...] [--shape B,T,H,D ...]
// [--dtype bf16] [--iters N] [--warmup N] [--profile N] [--out bench/results/X.json]`: forward and forward+backward
// times of the recurrence ops beside the roofline floor measured on this machine (ops/bench_ops.h).
// Defaults are issue 6's shapes (B8 T4096 H16 D128 and B2 T16384 H16 D128, bf16). The result JSON goes
// to stdout and, with --out, to a file (atomically; parent directories created).
#include "apps/cli.h"
#include "subq/ops/bench_ops.h"

namespace subq::cli {

namespace {
void add_bench_ops_command(CLI::App& app, Context& ctx) {
  auto* cmd = bench_command(app)->add_subcommand("ops", "recurrence op times (fwd, fwd+bwd) vs the roofline floor");
  struct Opts {
    std::vector<std::string> ops, impls, shapes;
    std::string device = "auto", dtype = "bf16", out;
    int64_t iters = 20, warmup = 3, pool = 4, chunk = 0, profile = 0;
    bool no_backward = false;
  };
  static Opts o;
  cmd->add_option("--op", o.ops, "op(s): gated_delta, gated_delta_neg, ssd, mlstm (default: all)")->take_all();
  cmd->add_option("--impl", o.impls, "implementation(s): reference, cuda (default: reference)")->take_all();
  cmd->add_option("--shape", o.shapes, "B,T,H,D (repeatable; default 8,4096,16,128 and 2,16384,16,128)")->take_all();
  cmd->add_option("--device", o.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "bf16 | fp16 | fp32")->capture_default_str();
  cmd->add_option("--chunk", o.chunk, "chunk size; 0 = the op's default")->capture_default_str();
  cmd->add_option("--iters", o.iters, "timed calls per measurement")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "untimed calls first")->capture_default_str();
  cmd->add_option("--pool", o.pool, "fresh input sets cycled through")->capture_default_str();
  cmd->add_flag("--no-backward", o.no_backward, "time the forward only");
  cmd->add_option("--profile", o.profile,
                  "also profile one more call per entry and keep its top N kernels (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  cmd->add_option("-o,--out", o.out, "also write the result JSON here (e.g. bench/results/ops-h200.json)");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      ops::BenchOpsOptions bo;
      if (!o.ops.empty()) bo.ops = o.ops;
      if (!o.impls.empty()) bo.impls = o.impls;
      if (!o.shapes.empty()) {
        bo.shapes.clear();
        for (const auto& s : o.shapes) bo.shapes.push_back(ops::parse_op_shape(s));
      }
      bo.device = o.device;
      bo.dtype = o.dtype;
      bo.chunk_size = o.chunk;
      bo.iters = o.iters;
      bo.warmup = o.warmup;
      bo.pool = o.pool;
      bo.backward = !o.no_backward;
      bo.profile_top = o.profile;
      bo.argv = ctx.argv;
      nlohmann::json r = ops::bench_ops(bo);
      emit_bench_result(r.dump(2) + "\n", o.out);
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(91, add_bench_ops_command);

}  // namespace subq::cli
