// subq.cpp — the `subq` binary: one CLI11 app, one subcommand per job. Only this file maps errors to
// exit codes: subq::Error carries its own (2 for bad usage, config or input; 1 for runtime failures),
// CLI11 parse errors are usage errors (2), anything else is a runtime failure (1).
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>

#include "apps/cli.h"
#include "subq/core/build_info.h"
#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"

namespace subq::cli {
std::vector<CommandEntry>& command_registry() {
  static std::vector<CommandEntry> r;
  return r;
}

void emit_bench_result(const std::string& text, const std::string& out) {
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  if (out.empty()) return;
  const auto parent = std::filesystem::path(out).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  fsx::write_file_atomic(out, text);
  log::info(str("result written to ", out));
}
}  // namespace subq::cli

int main(int argc, char** argv) {
  subq::cli::Context ctx;
  for (int i = 0; i < argc; ++i) ctx.argv.emplace_back(argv[i]);

  CLI::App app{"subq — train, evaluate and compare subquadratic sequence models", "subq"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(subq::build_version()) + " (" + subq::build_commit() + ")");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "console log level: debug, info, warn, error")->capture_default_str();
  auto cmds = subq::cli::command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  for (const auto& c : cmds) c.add(app, ctx);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  try {
    subq::log::set_level(log_level);
    int rc = ctx.action ? ctx.action() : 0;
    subq::log::flush();
    return rc;
  } catch (const subq::Error& e) {
    subq::log::error(e.what());
    subq::log::flush();
    return e.exit_code();
  } catch (const c10::Error& e) {
    subq::log::error(std::string("torch: ") + e.what_without_backtrace());
    subq::log::flush();
    return 1;
  } catch (const std::exception& e) {
    subq::log::error(e.what());
    subq::log::flush();
    return 1;
  }
}
