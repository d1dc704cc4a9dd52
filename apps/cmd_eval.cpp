// cmd_eval.cpp — `subq eval --run DIR | --config FILE`: held-out metrics of a trained model as JSON.
#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"

namespace subq::cli {

namespace {
void add_eval_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("eval", "evaluate a trained model on held-out data (JSON to stdout)");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
  };
  static Opts o;
  cmd->add_option("-c,--config", o.config, "run config (YAML), e.g. RUN_DIR/config.yaml")->required();
  cmd->add_option("--set", o.sets, "override a key (repeatable)")->take_all();
  cmd->callback([&ctx] {
    ctx.action = []() -> int {
      RunConfig cfg = load_run_config(o.config, o.sets);
      log::info(str("evaluating run ", run_dir_path(cfg)));
      throw RuntimeError("evaluation is not part of this build yet");
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(50, add_eval_command);

}  // namespace subq::cli
