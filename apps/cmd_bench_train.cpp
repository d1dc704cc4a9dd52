// cmd_bench_train.cpp — `subq bench train --config FILE [--set k=v ...] [--steps N] [--warmup N]
// [--out bench/results/X.json]`: training throughput (tokens/s, step time, MFU, peak memory) of a config
// on this machine, measured with the trainer's own step (see train/bench_train.h). The result JSON goes
// to stdout and, with --out, to a file (written atomically; parent directories created).
#include <cstdio>
#include <filesystem>

#include "apps/cli.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/data/tokenizer.h"
#include "subq/train/bench_train.h"

namespace subq::cli {

namespace {
void add_bench_train_command(CLI::App& app, Context& ctx) {
  auto* cmd = bench_command(app)->add_subcommand("train", "training throughput of a config (tokens/s, MFU, memory)");
  struct Opts {
    std::string config, out;
    std::vector<std::string> sets;
    int64_t steps = 20, warmup = 5;
  };
  static Opts o;
  cmd->add_option("-c,--config", o.config, "run config (YAML): model, batch, seq_len, device, dtype")->required();
  cmd->add_option("--set", o.sets, "override a key: --set train.batch_size=16 (repeatable)")->take_all();
  cmd->add_option("--steps", o.steps, "measured steps")->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "warm-up steps, not measured")->capture_default_str();
  cmd->add_option("-o,--out", o.out, "also write the result JSON here (e.g. bench/results/train-125m-h200.json)");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      RunConfig cfg = load_run_config(o.config, o.sets);
      if (cfg.model.vocab_size == 0) {
        std::error_code ec;
        if (cfg.data.tokenizer.empty() || !std::filesystem::exists(cfg.data.tokenizer, ec))
          throw ConfigError(str("model.vocab_size = 0 means \"take it from data.tokenizer\", but ",
                                cfg.data.tokenizer.empty() ? std::string("data.tokenizer is empty")
                                                           : cfg.data.tokenizer + " does not exist",
                                "; --set model.vocab_size=N (e.g. 32768) to benchmark without a tokenizer"));
        cfg.model.vocab_size = data::Tokenizer::from_file(cfg.data.tokenizer).vocab_size();
      }
      train::BenchTrainOptions bo;
      bo.steps = o.steps;
      bo.warmup = o.warmup;
      bo.argv = ctx.argv;
      nlohmann::json r = train::bench_train(cfg, bo);
      const std::string text = r.dump(2) + "\n";
      std::fputs(text.c_str(), stdout);
      std::fflush(stdout);
      if (!o.out.empty()) {
        auto parent = std::filesystem::path(o.out).parent_path();
        std::error_code ec;
        if (!parent.empty()) std::filesystem::create_directories(parent, ec);
        fsx::write_file_atomic(o.out, text);
        log::info(str("result written to ", o.out));
      }
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
