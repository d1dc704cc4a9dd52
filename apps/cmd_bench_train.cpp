// cmd_bench_train.cpp — `subq bench train --config FILE [--set k=v ...] [--steps N] [--warmup N]
// [--profile N] [--out bench/results/X.json]`: training throughput (tokens/s, step time, MFU, peak memory)
// of a config on this machine, measured with the trainer's own step (see train/bench_train.h). The result JSON goes
// to stdout and, with --out, to a file (written atomically; parent directories created).

#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/dist/context.h"
#include "subq/train/bench_train.h"
#include "subq/train/lm_data.h"

namespace subq::cli {

namespace {
void add_bench_train_command(CLI::App& app, Context& ctx) {
  auto* cmd = bench_command(app)->add_subcommand("train", "training throughput of a config (tokens/s, MFU, memory)");
  struct Opts {
    std::vector<std::string> configs;
    std::string out;
    std::vector<std::string> sets;
    int64_t steps = 20, warmup = 5, profile = 0;
  };
  static Opts o;
  cmd->add_option("-c,--config", o.configs,
                  "run config (YAML): model, batch, seq_len, device, dtype; repeat to merge more files on top")
      ->required()
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--set", o.sets, "override a key: --set train.batch_size=16 (repeatable)")->take_all();
  cmd->add_option("--steps", o.steps, "measured steps")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "warm-up steps, not measured")->capture_default_str();
  cmd->add_option("--profile", o.profile,
                  "N > 0: profile one extra step after the measured ones and show its top N kernels and CPU ops")
      ->capture_default_str();
  cmd->add_option("-o,--out", o.out, "also write the result JSON here (e.g. bench/results/train-125m-h200.json)");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      RunConfig cfg = load_run_config(o.configs, o.sets);
      // vocab_size 0: the tokenizer's vocabulary rounded as `subq train` rounds it (train::resolve_vocab_size).
      // An explicit vocab_size needs no tokenizer, so a model can be benchmarked before any data exists.
      if (cfg.model.vocab_size == 0) {
        try {
          train::resolve_vocab_size(cfg);
        } catch (const Error& e) {
          throw ConfigError(str(e.what(), " (or --set model.vocab_size=N to benchmark without a tokenizer)"));
        }
      }
      train::BenchTrainOptions bo;
      bo.steps = o.steps;
      bo.warmup = o.warmup;
      bo.profile_top = o.profile;
      bo.argv = ctx.argv;
      // under `subq launch` / torchrun / srun: every rank runs the benchmark, rank 0 reports
      const auto env = dist::LaunchEnv::from_environment();
      auto dctx = env.distributed() ? dist::Context::join(env, cfg.dist, dist::device_for(cfg.run.device, env))
                                    : std::make_unique<dist::Context>();
      nlohmann::json r = dist::run_guarded(*dctx, [&] {
        auto res = train::bench_train(cfg, bo, dctx.get());
        dctx->shutdown();
        return res;
      });
      if (r.is_null()) return 0;
      emit_bench_result(r.dump(2) + "\n", o.out);
      const auto& t = r["tokens_per_s"];
      log::info(str("median ", t.is_null() ? 0.0 : t["median"].get<double>(), " tokens/s, step ",
                    r["step_time_s"].is_null() ? 0.0 : r["step_time_s"]["median"].get<double>(), " s, MFU ",
                    r["mfu"].is_null() ? std::string("n/a") : std::to_string(r["mfu"]["median"].get<double>())));
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(90, add_bench_train_command);

}  // namespace subq::cli
