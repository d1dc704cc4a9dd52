// cmd_plot.cpp — `subq plot RUN_DIR [--out FILE.html]`: the run's metrics as one self-contained HTML
// report (inline SVG charts, summary numbers, resolved config). Safe to run while the run is training.
#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/train/plot.h"

namespace subq::cli {

namespace {
void add_plot_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("plot", "write an HTML report (loss, lr, throughput, MFU, grad norm, memory) of a run");
  struct Opts {
    std::string run_dir, out;
  };
  static Opts o;
  cmd->add_option("run_dir", o.run_dir, "run directory (holds metrics.jsonl)")->required();
  cmd->add_option("-o,--out", o.out, "output HTML file (default RUN_DIR/report.html)");
  cmd->callback([&ctx] {
    ctx.action = [] {
      std::string path = train::write_run_report(o.run_dir, o.out);
      log::info(str("report written to ", path));
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(70, add_plot_command);

}  // namespace subq::cli
