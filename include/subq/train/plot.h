// plot.h — the training report: metrics.jsonl -> one self-contained HTML page with inline SVG charts
// (`subq plot RUN_DIR`). No JavaScript, no fonts or scripts from the network: the file opens anywhere,
// from a cluster's scratch disk to an e-mail attachment.
//
// Reading metrics.jsonl (written by the trainer, one JSON object per line):
//   per log step  {"step","loss","lr","grad_norm","tokens","tokens_per_s","mfu","mem_gib","elapsed_s","data_s"}
//   per eval      {"step","eval_loss","eval_ppl","eval_bpb"}
// The reader tolerates a partially written last line (a run being written, or killed mid-write) and
// skips (and counts) any other line that is not a JSON object. The trainer itself moves the lines past
// the checkpoint it resumes from to metrics.superseded.jsonl; for files that were not cleaned that way
// (copied, concatenated, written by an older build), when a step at or before one already seen
// appears, the records at and after that step are dropped and the new ones kept, so the report shows
// the history the surviving checkpoint actually continued. Missing or non-numeric values
// (null for a skipped non-finite step) become gaps in the charts.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace subq::train {

// One metrics record: its step and the numeric fields it carries (non-numeric fields are dropped;
// a null or non-finite value is kept as NaN so that charts show a gap).
struct MetricsRecord {
  int64_t step = 0;
  std::map<std::string, double> values;
  double get(const std::string& key) const;  // NaN when absent
  bool has(const std::string& key) const { return values.count(key) != 0; }
};

struct MetricsLog {
  std::string path;
  std::vector<MetricsRecord> train;  // records with "loss", by increasing step
  std::vector<MetricsRecord> eval;   // records with "eval_loss", by increasing step
  int64_t lines = 0;                 // non-empty lines read
  int64_t skipped_lines = 0;         // lines that were not a JSON object with a numeric "step"
  bool partial_last_line = false;    // the last line was cut off (and skipped)
  int64_t rewinds = 0;               // times a resumed run went back in steps
};

// Parses metrics.jsonl text (`name` is used in messages). Never throws on malformed lines.
MetricsLog parse_metrics(const std::string& text, const std::string& name = "metrics.jsonl");
// Reads a metrics file. InputError when it is missing, empty, or holds no train/eval record.
MetricsLog read_metrics(const std::string& path);

// ---- SVG line charts ----------------------------------------------------------------------------

struct ChartSeries {
  std::string label;
  std::string color = "#1f77b4";
  std::vector<double> x, y;  // same length; a non-finite y breaks the line
  double width = 1.6;        // stroke width (px)
  double opacity = 1.0;
  bool markers = false;      // draw a dot (with a hover title) at each point
  bool dashed = false;
};

struct ChartSpec {
  std::string title, x_label, y_label;
  std::vector<ChartSeries> series;
  bool y_from_zero = false;           // include 0 in the y range (rates, memory)
  double x_min = 0, x_max = 0;        // shared x domain when x_min < x_max, else from the data
  int width = 600, height = 300;
  int64_t max_points_per_series = 1500;  // above this, min/max decimation (keeps spikes visible)
};

// One <svg> element (no XML prolog): frame, grid, ticks with labels, axis titles, legend, one <path>
// per series (M/L commands only) and <circle> markers. A chart with no finite point renders a
// "no data" note instead of axes.
std::string render_svg_chart(const ChartSpec& spec);

// Tick positions for [lo, hi] at 1-2-5 steps, about `target` of them; lo/hi rounded outwards to a tick
// by nice_range.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
void nice_range(double& lo, double& hi, int target = 5);
// A compact label for a tick value given the tick spacing: 1.5k, 2M, 3e-4, 0.25.
std::string format_tick(double v, double spacing);
// Min/max decimation to at most about 2*buckets points (each bucket keeps its min and max, in order).
void decimate_minmax(const std::vector<double>& x, const std::vector<double>& y, int64_t buckets,
                     std::vector<double>& out_x, std::vector<double>& out_y);
// Centred moving average over [i - h, i + h] (the window shrinks symmetrically near both ends, so it
// never lags); non-finite inputs are left out of the means and give NaN at their own position.
std::vector<double> smooth_centered(const std::vector<double>& y, int64_t half_window);

// ---- the report ---------------------------------------------------------------------------------

struct ReportInputs {
  std::string run_name;
  std::string config_yaml;  // config.yaml text ("" when absent)
  std::string run_json;     // run.json text ("" when absent)
};

// The whole HTML page.
std::string render_report_html(const MetricsLog& log, const ReportInputs& in);

// Reads RUN_DIR/metrics.jsonl (+ config.yaml, run.json when present) and writes the report atomically
// to `out` (default RUN_DIR/report.html). Returns the path written.
std::string write_run_report(const std::string& run_dir, const std::string& out = "");

}  // namespace subq::train
