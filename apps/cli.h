// cli.h — shared pieces of the `subq` command line: each subcommand lives in apps/cmd_<name>.cpp and
// registers itself with add_<name>_command(). A subcommand's callback stores the action to run;
// main() runs it and turns exceptions into exit codes (0 ok, 1 runtime failure, 2 bad usage/config/input).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace subq::cli {

struct Context {
  std::function<int()> action;     // set by the chosen subcommand
  std::vector<std::string> argv;   // the full command line, recorded in run directories
};

void add_version_command(CLI::App& app, Context& ctx);
void add_config_command(CLI::App& app, Context& ctx);
void add_train_command(CLI::App& app, Context& ctx);
void add_eval_command(CLI::App& app, Context& ctx);

}  // namespace subq::cli
