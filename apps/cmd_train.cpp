// cmd_train.cpp — `subq train --config FILE [--set k=v ...]`: resolve the config, open the run directory
// (resolved config, run.json, log), then run the trainer.
#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"

namespace subq::cli {

namespace {
void add_train_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("train", "train a model from a YAML config");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
    bool dry_run = false;
  };
  static Opts o;
  cmd->add_option("-c,--config", o.config, "run config (YAML)")->required();
  cmd->add_option("--set", o.sets, "override a key: --set train.steps=100 (repeatable)")->take_all();
  cmd->add_flag("--dry-run", o.dry_run, "resolve the config and write the run directory, then stop");
  cmd->callback([&ctx] {
    ctx.action = [&ctx] {
      RunConfig cfg = load_run_config(o.config, o.sets);
      log::set_level(cfg.run.log_level);
      RunDir rd = open_run_dir(cfg, ctx.argv);
      log::info(str("run directory: ", rd.path, " (resolved config: ", rd.config_path(), ")"));
      if (o.dry_run) return 0;
      throw RuntimeError("the training loop is not part of this build yet (use --dry-run to check a config)");
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(40, add_train_command);

}  // namespace subq::cli
