// cmd_train.cpp — `subq train --config FILE [--config MORE ...] [--set k=v ...] [--dry-run]`: resolve the
// config (files merged in order; model.vocab_size from the tokenizer or the synthetic task when 0), open the
// run directory (resolved config, run.json, log), build the training source and the periodic evaluation for
// data.task (train/run_data.h), and run the trainer (which resumes from the run's newest checkpoint when
// run.resume = auto).
//
// SIGINT / SIGTERM ask the trainer to stop after the current step: it writes a checkpoint and the command
// exits with status 1 ("interrupted"; the same command resumes). A second signal kills the process at once.
//
// Data parallel: when the environment says this process is one of several (`subq launch`, torchrun, srun:
// see dist/launch_env.h) it joins the process group first, checks that every rank resolved the same
// config, lets only rank 0 write the run directory, and reads its share of the data. On CPU with
// run.threads = 0 each of the node's processes gets cores / processes-per-node threads. A failure on any
// rank stops every rank (dist::run_guarded).
#include <csignal>
#include <filesystem>
#include <thread>

#include <torch/torch.h>

#include "apps/cli.h"
#include "subq/core/config.h"
#include "subq/core/device.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"
#include "subq/dist/context.h"
#include "subq/train/lm_data.h"
#include "subq/train/run_data.h"
#include "subq/train/trainer.h"

namespace subq::cli {

namespace {

extern "C" void on_stop_signal(int sig) {
  if (train::stop_requested()) {  // second signal: give up at once
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  train::request_stop();
}

// Installs the stop handlers for its lifetime.
struct StopSignals {
  using handler = void (*)(int);
  handler old_int, old_term;
  StopSignals() : old_int(std::signal(SIGINT, on_stop_signal)), old_term(std::signal(SIGTERM, on_stop_signal)) {}
  ~StopSignals() {
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
  }
};

void add_train_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("train", "train a model from a YAML config (resumes the run's latest checkpoint)");
  struct Opts {
    std::vector<std::string> configs;
    std::vector<std::string> sets;
    bool dry_run = false;
  };
  static Opts o;
  cmd->add_option("-c,--config", o.configs,
                  "run config (YAML); repeat to merge more files on top, later ones winning: --config "
                  "configs/synthetic/parity.yaml --config configs/synthetic/models/gdn.yaml")
      ->required()
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--set", o.sets, "override a key: --set train.steps=100 (repeatable)")->take_all();
  cmd->add_flag("--dry-run", o.dry_run, "resolve the config and write the run directory, then stop");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      RunConfig cfg = load_run_config(o.configs, o.sets);
      log::set_level(cfg.run.log_level);
      const auto env = dist::LaunchEnv::from_environment();
      if (env.distributed()) log::set_rank(env.rank);
      if (o.dry_run && cfg.data.task == "code" && cfg.model.vocab_size == 0 && !cfg.data.tokenizer.empty() &&
          !std::filesystem::exists(cfg.data.tokenizer)) {
        log::warn(str("model.vocab_size stays 0 in the dry run: data.tokenizer ", cfg.data.tokenizer,
                      " does not exist yet (run `subq prepare code`)"));
      } else {
        train::resolve_vocab_size(cfg);
      }
      auto dctx = env.distributed() ? dist::Context::join(env, cfg.dist, dist::device_for(cfg.run.device, env))
                                    : std::make_unique<dist::Context>();
      return dist::run_guarded(*dctx, [&] {
        dctx->check_same("resolved config", config::to_yaml(cfg));
        RunDir rd = dctx->is_main() ? open_run_dir(cfg, ctx.argv) : RunDir{run_dir_path(cfg)};
        log::info(str("run directory: ", rd.path, " (resolved config: ", rd.config_path(), ")"));
        if (o.dry_run) {
          dctx->shutdown();
          return 0;
        }
        const torch::Device device = dctx->distributed() ? dctx->device() : resolve_device(cfg.run.device);
        if (dctx->distributed() && device.is_cpu() && cfg.run.threads == 0)
          at::set_num_threads(static_cast<int>(std::max<unsigned>(
              1, std::thread::hardware_concurrency() / static_cast<unsigned>(std::max(1, env.local_world)))));
        train::RunData data = train::open_run_data(cfg, device, /*with_train=*/true, /*with_eval=*/true, dctx->rank(),
                                                   dctx->world());
        if (data.eval_what.empty()) log::info("data.val is \"\": no held-out evaluation during training");
        else log::info(str("evaluation: ", data.eval_what));
        StopSignals signals;
        train::TrainResult r = train::train(cfg, rd, {data.train, data.evaluator}, {}, dctx.get());
        dctx->shutdown();
        return r.finished ? 0 : 1;
      });
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(40, add_train_command);

}  // namespace subq::cli
