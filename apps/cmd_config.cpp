// cmd_config.cpp — `subq config`: --explain (every key, type, default, doc), --check FILE [--set k=v],
// --print (the resolved config as YAML), --defaults (a fully commented default config).
#include <cstdio>

#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"

namespace subq::cli {

namespace {
void add_config_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("config", "explain config keys, or check / print a config file");
  struct Opts {
    bool explain = false, print = false, defaults = false;
    std::string prefix;
    std::vector<std::string> check;
    std::vector<std::string> sets;
  };
  static Opts o;
  cmd->add_flag("--explain", o.explain, "list every key with its type, default, constraints and doc");
  cmd->add_option("--prefix", o.prefix, "with --explain: only keys under this prefix (e.g. model or optim.lr)");
  cmd->add_option("--check", o.check,
                  "validate this config file (with its includes and --set overrides); repeat to merge more files "
                  "on top, as `subq train --config A --config B` does")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--set", o.sets, "override a key: --set model.d_model=512 (repeatable)")->take_all();
  cmd->add_flag("--print", o.print, "print the resolved config (every key) as YAML");
  cmd->add_flag("--defaults", o.defaults, "print the default config as YAML with a comment per key");
  cmd->callback([&ctx] {
    ctx.action = [] {
      if (!o.explain && o.check.empty() && !o.print && !o.defaults)
        throw UsageError("subq config: give --explain, --check FILE, --print or --defaults (see subq config --help)");
      if (o.explain) std::fputs(config::explain(config::schema_of<RunConfig>(), o.prefix).c_str(), stdout);
      if (o.defaults) std::fputs(config::to_yaml(RunConfig{}, true).c_str(), stdout);
      if (!o.check.empty() || o.print || !o.sets.empty()) {
        RunConfig cfg = load_run_config(o.check, o.sets);
        if (o.print) std::fputs(config::to_yaml(cfg).c_str(), stdout);
        if (!o.check.empty()) {
          std::string files;
          for (const auto& f : o.check) files += (files.empty() ? "" : " + ") + f;
          log::info(str(files, ": ok (run directory ", run_dir_path(cfg), ")"));
        }
      }
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(20, add_config_command);

}  // namespace subq::cli
