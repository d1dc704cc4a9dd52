// cli.h — shared pieces of the `subq` command line. Each subcommand lives in apps/cmd_<name>.cpp and
// registers itself with SUBQ_REGISTER_COMMAND(order, fn), where fn(CLI::App&, Context&) adds the
// subcommand; `order` sorts them in --help. A subcommand's callback stores the action to run in
// ctx.action; main() runs it and turns exceptions into exit codes (0 ok, 1 runtime failure, 2 bad
// usage/config/input).
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

using CommandAdder = void (*)(CLI::App&, Context&);
struct CommandEntry {
  int order;
  CommandAdder add;
};
std::vector<CommandEntry>& command_registry();

// The `subq bench` parent command, created on first use: bench drivers in different files add their
// own subcommands to it (subq bench train, subq bench tokenizer, ...).
inline CLI::App* bench_command(CLI::App& app) {
  for (auto* c : app.get_subcommands([](CLI::App* s) { return s->get_name() == "bench"; })) return c;
  auto* b = app.add_subcommand("bench", "benchmark drivers; results go to bench/results/");
  b->require_subcommand(1);
  return b;
}

// A benchmark driver's result: `text` (JSON) to stdout and, when `out` is not empty, to that file too
// (written atomically, parent directories created), logging where it went.
void emit_bench_result(const std::string& text, const std::string& out);

struct CommandRegistrar {
  CommandRegistrar(int order, CommandAdder add) { command_registry().push_back({order, add}); }
};

}  // namespace subq::cli

#define SUBQ_CLI_CONCAT2(a, b) a##b
#define SUBQ_CLI_CONCAT(a, b) SUBQ_CLI_CONCAT2(a, b)
#define SUBQ_REGISTER_COMMAND(order, fn) \
  static ::subq::cli::CommandRegistrar SUBQ_CLI_CONCAT(subq_cmd_registrar_, __LINE__)(order, fn)
