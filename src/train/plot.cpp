// plot.cpp — see plot.h. The training report: a metrics.jsonl reader and a small SVG line-chart
// renderer, then one HTML page.
//
// Decisions:
//  * Hand-written SVG (no JS, no fonts, no network): paths use only absolute M/L commands with one
//    decimal, so a chart is easy to check (tests count the points) and small; long runs are decimated
//    per series with min/max buckets, which keeps loss spikes visible where plain subsampling hides them.
//  * The training loss is drawn raw (faint) and smoothed by a centred moving average over ~1/30 of the
//    logged points. Centred, not an EMA: an EMA lags the steep early drop of a loss curve by its whole
//    memory and draws the smoothed curve visibly above the raw one; a centred window has no lag (its
//    window shrinks symmetrically at both ends, so the last point averages only a few recent logs).
//  * All charts share the x domain (steps) so they line up vertically; y ranges are rounded out to 1-2-5
//    ticks; rates and memory start at zero so that a 2% throughput wobble does not look like a cliff.
//  * Text is measured by a fixed per-character width estimate (no font metrics without a browser);
//    the legend and labels leave room for that estimate's error.
#include "subq/train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/run_dir.h"

namespace fs = std::filesystem;

namespace subq::train {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// One decimal, no "-0.0".
std::string coord(double v) {
  std::string s = fmt("%.1f", v);
  if (s == "-0.0") s = "0.0";
  return s;
}

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string strip_zeros(std::string s) {
  if (s.find('.') == std::string::npos) return s;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// A value for tables and hover titles: 4 significant digits, thousands as k/M/G.
std::string human(double v) {
  if (!std::isfinite(v)) return "–";
  double a = std::fabs(v);
  if (a >= 1e9) return strip_zeros(fmt("%.2f", v / 1e9)) + "G";
  if (a >= 1e6) return strip_zeros(fmt("%.2f", v / 1e6)) + "M";
  if (a >= 1e4) return strip_zeros(fmt("%.1f", v / 1e3)) + "k";
  if (a != 0 && a < 1e-3) return fmt("%.3g", v);
  return strip_zeros(fmt("%.4g", v));
}

std::string duration(double s) {
  if (!std::isfinite(s)) return "–";
  int64_t t = static_cast<int64_t>(std::llround(s));
  char buf[48];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh %02lldm %02llds", (long long)(t / 3600), (long long)(t / 60 % 60),
                  (long long)(t % 60));
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%lldm %02llds", (long long)(t / 60), (long long)(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  return buf;
}

double text_width(const std::string& s, double font_px) { return 0.6 * font_px * static_cast<double>(s.size()); }

void truncate_from(std::vector<MetricsRecord>& v, int64_t step) {
  while (!v.empty() && v.back().step >= step) v.pop_back();
}

double median(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return kNaN;
  size_t m = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + m, v.end());
  double hi = v[m];
  if (v.size() % 2) return hi;
  double lo = *std::max_element(v.begin(), v.begin() + m);
  return 0.5 * (lo + hi);
}

}  // namespace

double MetricsRecord::get(const std::string& key) const {
  auto it = values.find(key);
  return it == values.end() ? kNaN : it->second;
}

// ---- reading ------------------------------------------------------------------------------------

MetricsLog parse_metrics(const std::string& text, const std::string& name) {
  MetricsLog log;
  log.path = name;
  // Split into lines, remembering whether the last one was terminated.
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  const bool last_terminated = text.empty() || text.back() == '\n';
  int64_t last_nonempty = -1;
  for (size_t i = 0; i < lines.size(); ++i)
    if (lines[i].find_first_not_of(" \t\r") != std::string::npos) last_nonempty = static_cast<int64_t>(i);

  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++log.lines;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    bool ok = j.is_object() && j.contains("step") && j["step"].is_number();
    if (!ok) {
      if (static_cast<int64_t>(i) == last_nonempty && !last_terminated)
        log.partial_last_line = true;  // being written right now, or cut by a kill
      else
        ++log.skipped_lines;
      continue;
    }
    MetricsRecord r;
    r.step = static_cast<int64_t>(std::llround(j["step"].get<double>()));
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "step") continue;
      if (it->is_number()) {
        double v = it->get<double>();
        r.values[it.key()] = std::isfinite(v) ? v : kNaN;
      } else if (it->is_null()) {
        r.values[it.key()] = kNaN;
      }
    }
    const bool is_train = r.has("loss"), is_eval = r.has("eval_loss");
    if (!is_train && !is_eval) continue;  // other record kinds (events) are not charted
    // A resumed run logs steps again from its checkpoint: the later launch's history wins.
    bool rewind = (is_train && !log.train.empty() && r.step <= log.train.back().step) ||
                  (is_eval && !log.eval.empty() && r.step <= log.eval.back().step);
    if (rewind) {
      ++log.rewinds;
      truncate_from(log.train, r.step);
      truncate_from(log.eval, r.step);
    }
    if (is_train) log.train.push_back(r);
    if (is_eval) log.eval.push_back(r);
  }
  return log;
}

MetricsLog read_metrics(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw InputError(str("no metrics file at ", path,
                         ": give the run directory of a `subq train` run (it writes metrics.jsonl once the first "
                         "train.log_every steps are done)"));
  std::string text = fsx::read_file(path, "metrics file");
  if (text.find_first_not_of(" \t\r\n") == std::string::npos)
    throw InputError(str("metrics file ", path,
                         " is empty: the run has not logged a step yet (it logs every train.log_every steps); "
                         "plot again later"));
  MetricsLog log = parse_metrics(text, path);
  if (log.train.empty() && log.eval.empty())
    throw InputError(str("metrics file ", path, " has no training or eval records (", log.lines, " lines, ",
                         log.skipped_lines + (log.partial_last_line ? 1 : 0),
                         " unreadable): is it a subq metrics.jsonl?"));
  return log;
}

// ---- chart helpers ------------------------------------------------------------------------------

namespace {
double nice_step(double range, int target) {
  if (!(range > 0) || !std::isfinite(range)) return 1.0;
  double raw = range / std::max(1, target);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double r = raw / mag;
  double m = r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10;
  return m * mag;
}
}  // namespace

void nice_range(double& lo, double& hi, int target) {
  if (!(hi > lo)) {
    double pad = lo == 0 ? 1.0 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  double step = nice_step(hi - lo, target);
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> t;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return t;
  double step = nice_step(hi - lo, target);
  double first = std::ceil(lo / step - 1e-9) * step;
  for (int i = 0; i < 1000; ++i) {
    double v = first + i * step;
    if (v > hi + step * 1e-9) break;
    if (std::fabs(v) < step * 1e-9) v = 0;
    t.push_back(v);
  }
  return t;
}

std::string format_tick(double v, double spacing) {
  if (v == 0) return "0";
  spacing = std::fabs(spacing);
  if (!(spacing > 0)) spacing = std::fabs(v);
  auto decimals_for = [](double sp) {
    return std::max(0, static_cast<int>(-std::floor(std::log10(sp) + 1e-9)));
  };
  const struct {
    double scale;
    const char* suffix;
  } si[] = {{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}};
  for (const auto& s : si) {
    // k only when ticks are >= 1000 apart (1200, 1400 read better than 1.2k); M and up from a tenth.
    if (spacing >= (s.scale == 1e3 ? 1e3 : s.scale / 10)) {
      int d = decimals_for(spacing / s.scale);
      return fmt(("%." + std::to_string(d) + "f").c_str(), v / s.scale) + s.suffix;
    }
  }
  if (spacing < 1e-3) {
    int e = static_cast<int>(std::floor(std::log10(std::fabs(v)) + 1e-9));
    int se = static_cast<int>(std::floor(std::log10(spacing) + 1e-9));
    int d = std::max(0, e - se);
    std::string m = strip_zeros(fmt(("%." + std::to_string(d) + "f").c_str(), v / std::pow(10.0, e)));
    return m + "e" + std::to_string(e);
  }
  return fmt(("%." + std::to_string(decimals_for(spacing)) + "f").c_str(), v);
}

void decimate_minmax(const std::vector<double>& x, const std::vector<double>& y, int64_t buckets,
                     std::vector<double>& out_x, std::vector<double>& out_y) {
  out_x.clear();
  out_y.clear();
  const int64_t n = static_cast<int64_t>(std::min(x.size(), y.size()));
  if (buckets < 1 || n <= 2 * buckets) {
    out_x.assign(x.begin(), x.begin() + n);
    out_y.assign(y.begin(), y.begin() + n);
    return;
  }
  for (int64_t b = 0; b < buckets; ++b) {
    int64_t lo = b * n / buckets, hi = (b + 1) * n / buckets;
    int64_t imin = -1, imax = -1;
    for (int64_t i = lo; i < hi; ++i) {
      if (!std::isfinite(y[i])) continue;
      if (imin < 0 || y[i] < y[imin]) imin = i;
      if (imax < 0 || y[i] > y[imax]) imax = i;
    }
    if (imin < 0) {  // nothing finite here: keep the gap
      out_x.push_back(x[lo]);
      out_y.push_back(kNaN);
      continue;
    }
    int64_t a = std::min(imin, imax), c = std::max(imin, imax);
    out_x.push_back(x[a]);
    out_y.push_back(y[a]);
    if (c != a) {
      out_x.push_back(x[c]);
      out_y.push_back(y[c]);
    }
  }
}

std::vector<double> smooth_centered(const std::vector<double>& y, int64_t half_window) {
  const int64_t n = static_cast<int64_t>(y.size());
  std::vector<double> sum(n + 1, 0.0), cnt(n + 1, 0.0);  // prefix sums over finite values
  for (int64_t i = 0; i < n; ++i) {
    bool ok = std::isfinite(y[i]);
    sum[i + 1] = sum[i] + (ok ? y[i] : 0.0);
    cnt[i + 1] = cnt[i] + (ok ? 1.0 : 0.0);
  }
  std::vector<double> out(n, kNaN);
  const int64_t h = std::max<int64_t>(0, half_window);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(y[i])) continue;
    // Symmetric window, shrunk near the ends so that the first and last points stay centred.
    int64_t r = std::min({h, i, n - 1 - i});
    int64_t lo = i - r, hi = i + r + 1;
    out[i] = (sum[hi] - sum[lo]) / (cnt[hi] - cnt[lo]);
  }
  return out;
}

std::string render_svg_chart(const ChartSpec& spec) {
  const double W = spec.width, H = spec.height;
  const double ml = 68, mr = 18, mt = 40, mb = 46;
  const double pw = W - ml - mr, ph = H - mt - mb;
  const double font = 12;

  // Decimate, and find the data ranges.
  struct Prepared {
    const ChartSeries* s;
    std::vector<double> x, y;
  };
  std::vector<Prepared> prep;
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  bool any = false;
  for (const auto& s : spec.series) {
    Prepared p{&s, {}, {}};
    std::vector<double> x = s.x, y = s.y;
    y.resize(x.size(), kNaN);
    decimate_minmax(x, y, spec.max_points_per_series / 2, p.x, p.y);
    for (size_t i = 0; i < p.x.size(); ++i) {
      if (!std::isfinite(p.x[i]) || !std::isfinite(p.y[i])) continue;
      any = true;
      xmin = std::min(xmin, p.x[i]);
      xmax = std::max(xmax, p.x[i]);
      ymin = std::min(ymin, p.y[i]);
      ymax = std::max(ymax, p.y[i]);
    }
    prep.push_back(std::move(p));
  }

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"" << W << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << W << " " << H << "\" font-family=\"sans-serif\" font-size=\"" << font << "\">\n";
  o << "<title>" << html_escape(spec.title) << "</title>\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"#ffffff\"/>\n";
  o << "<text x=\"" << ml << "\" y=\"20\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">"
    << html_escape(spec.title) << "</text>\n";
  if (!any) {
    o << "<rect x=\"" << ml << "\" y=\"" << mt << "\" width=\"" << pw << "\" height=\"" << ph
      << "\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n";
    o << "<text x=\"" << coord(ml + pw / 2) << "\" y=\"" << coord(mt + ph / 2) << "\" text-anchor=\"middle\" fill=\"#888\">"
      << "no data" << "</text>\n</svg>\n";
    return o.str();
  }

  if (spec.x_min < spec.x_max) {
    xmin = std::min(xmin, spec.x_min);
    xmax = std::max(xmax, spec.x_max);
  }
  if (!(xmax > xmin)) {
    xmin -= 1;
    xmax += 1;
  }
  if (spec.y_from_zero) {
    ymin = std::min(ymin, 0.0);
    ymax = std::max(ymax, 0.0);
  }
  nice_range(ymin, ymax, 5);
  auto px = [&](double x) { return ml + (x - xmin) / (xmax - xmin) * pw; };
  auto py = [&](double y) { return mt + ph - (y - ymin) / (ymax - ymin) * ph; };

  // Frame, grid and ticks.
  o << "<rect x=\"" << ml << "\" y=\"" << mt << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"#fcfcfc\" stroke=\"#bbb\"/>\n";
  auto yt = nice_ticks(ymin, ymax, 5);
  double ysp = yt.size() > 1 ? yt[1] - yt[0] : (ymax - ymin);
  o << "<g class=\"yticks\" fill=\"#444\" text-anchor=\"end\">\n";
  for (double v : yt) {
    double y = py(v);
    o << "<line x1=\"" << ml << "\" y1=\"" << coord(y) << "\" x2=\"" << coord(ml + pw) << "\" y2=\"" << coord(y)
      << "\" stroke=\"#e4e4e4\"/>";
    o << "<text x=\"" << coord(ml - 6) << "\" y=\"" << coord(y + 4) << "\">" << html_escape(format_tick(v, ysp))
      << "</text>\n";
  }
  o << "</g>\n";
  auto xt = nice_ticks(xmin, xmax, std::max(2, static_cast<int>(pw / 90)));
  double xsp = xt.size() > 1 ? xt[1] - xt[0] : (xmax - xmin);
  o << "<g class=\"xticks\" fill=\"#444\" text-anchor=\"middle\">\n";
  for (double v : xt) {
    double x = px(v);
    o << "<line x1=\"" << coord(x) << "\" y1=\"" << coord(mt + ph) << "\" x2=\"" << coord(x) << "\" y2=\""
      << coord(mt + ph + 5) << "\" stroke=\"#888\"/>";
    o << "<text x=\"" << coord(x) << "\" y=\"" << coord(mt + ph + 18) << "\">" << html_escape(format_tick(v, xsp))
      << "</text>\n";
  }
  o << "</g>\n";
  // Axis titles.
  o << "<text x=\"" << coord(ml + pw / 2) << "\" y=\"" << coord(H - 8) << "\" text-anchor=\"middle\" fill=\"#333\">"
    << html_escape(spec.x_label) << "</text>\n";
  o << "<text transform=\"translate(14," << coord(mt + ph / 2) << ") rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">"
    << html_escape(spec.y_label) << "</text>\n";

  // Series.
  for (const auto& p : prep) {
    const ChartSeries& s = *p.s;
    std::string d;
    bool pen = false;
    for (size_t i = 0; i < p.x.size(); ++i) {
      if (!std::isfinite(p.x[i]) || !std::isfinite(p.y[i])) {
        pen = false;
        continue;
      }
      d += pen ? " L" : (d.empty() ? "M" : " M");
      d += coord(px(p.x[i])) + " " + coord(py(p.y[i]));
      pen = true;
    }
    if (d.empty()) continue;
    o << "<path class=\"series\" d=\"" << d << "\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\""
      << s.width << "\" stroke-opacity=\"" << s.opacity << "\" stroke-linejoin=\"round\""
      << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << "><title>" << html_escape(s.label) << "</title></path>\n";
    if (s.markers) {
      o << "<g fill=\"" << s.color << "\">";
      for (size_t i = 0; i < p.x.size(); ++i) {
        if (!std::isfinite(p.x[i]) || !std::isfinite(p.y[i])) continue;
        o << "<circle cx=\"" << coord(px(p.x[i])) << "\" cy=\"" << coord(py(p.y[i])) << "\" r=\"3\"><title>"
          << html_escape(s.label) << " @ step " << human(p.x[i]) << ": " << human(p.y[i]) << "</title></circle>";
      }
      o << "</g>\n";
    }
  }

  // Legend: right-aligned in the title row.
  double lx = W - mr;
  for (auto it = prep.rbegin(); it != prep.rend(); ++it) {
    const ChartSeries& s = *it->s;
    if (s.label.empty()) continue;
    double tw = text_width(s.label, 11);
    lx -= tw;
    o << "<text x=\"" << coord(lx) << "\" y=\"20\" font-size=\"11\" fill=\"#333\">" << html_escape(s.label) << "</text>";
    lx -= 22;
    o << "<line x1=\"" << coord(lx) << "\" y1=\"16\" x2=\"" << coord(lx + 16) << "\" y2=\"16\" stroke=\"" << s.color
      << "\" stroke-width=\"" << std::max(2.0, s.width) << "\" stroke-opacity=\"" << std::max(0.5, s.opacity) << "\""
      << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << "/>\n";
    lx -= 12;
  }
  o << "</svg>\n";
  return o.str();
}

// ---- the report ---------------------------------------------------------------------------------

namespace {

struct Column {
  std::vector<double> x, y;
};
Column column(const std::vector<MetricsRecord>& rs, const std::string& key, double scale = 1.0) {
  Column c;
  for (const auto& r : rs) {
    if (!r.has(key)) continue;
    c.x.push_back(static_cast<double>(r.step));
    c.y.push_back(r.get(key) * scale);
  }
  return c;
}

ChartSeries series(const std::string& label, const std::string& color, Column c) {
  ChartSeries s;
  s.label = label;
  s.color = color;
  s.x = std::move(c.x);
  s.y = std::move(c.y);
  return s;
}

double last_finite(const std::vector<double>& v) {
  for (auto it = v.rbegin(); it != v.rend(); ++it)
    if (std::isfinite(*it)) return *it;
  return kNaN;
}

double max_finite(const std::vector<double>& v) {
  double m = kNaN;
  for (double x : v)
    if (std::isfinite(x) && !(x <= m)) m = x;
  return m;
}

void row(std::ostringstream& o, const std::string& k, const std::string& v) {
  o << "<tr><th>" << html_escape(k) << "</th><td>" << html_escape(v) << "</td></tr>\n";
}

}  // namespace

std::string render_report_html(const MetricsLog& log, const ReportInputs& in) {
  const auto& tr = log.train;
  const auto& ev = log.eval;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0;
  for (const auto* v : {&tr, &ev})
    for (const auto& r : *v) {
      x0 = std::min(x0, static_cast<double>(r.step));
      x1 = std::max(x1, static_cast<double>(r.step));
    }

  auto base = [&](const std::string& title, const std::string& ylabel) {
    ChartSpec c;
    c.title = title;
    c.x_label = "step";
    c.y_label = ylabel;
    if (x0 < x1) {
      c.x_min = x0;
      c.x_max = x1;
    }
    return c;
  };

  // Loss: raw, smoothed, eval.
  Column loss = column(tr, "loss");
  const int64_t half = static_cast<int64_t>(loss.y.size()) / 60;  // window ~ n/30
  std::vector<ChartSpec> charts;
  {
    ChartSpec c = base("Loss", "loss (nats/token)");
    ChartSeries raw = series("train (raw)", "#1f77b4", loss);
    raw.opacity = 0.3;
    raw.width = 1.0;
    Column sm{loss.x, smooth_centered(loss.y, half)};
    ChartSeries smooth = series("train (smoothed)", "#1f77b4", sm);
    smooth.width = 2.2;
    ChartSeries eval = series("eval", "#d62728", column(ev, "eval_loss"));
    eval.markers = true;
    eval.width = 1.8;
    c.series = {raw, smooth, eval};
    charts.push_back(std::move(c));
  }
  {
    ChartSpec c = base("Learning rate", "lr");
    c.y_from_zero = true;
    c.series = {series("lr", "#2ca02c", column(tr, "lr"))};
    charts.push_back(std::move(c));
  }
  {
    ChartSpec c = base("Throughput", "tokens / s");
    c.y_from_zero = true;
    c.series = {series("tokens/s", "#9467bd", column(tr, "tokens_per_s"))};
    charts.push_back(std::move(c));
  }
  {
    ChartSpec c = base("Model FLOPs utilisation", "MFU (%)");
    c.y_from_zero = true;
    c.series = {series("MFU", "#8c564b", column(tr, "mfu", 100.0))};
    charts.push_back(std::move(c));
  }
  {
    ChartSpec c = base("Gradient norm (before clipping)", "global L2 norm");
    c.y_from_zero = true;
    Column g = column(tr, "grad_norm");
    ChartSeries raw = series("grad norm", "#ff7f0e", g);
    raw.opacity = 0.45;
    raw.width = 1.0;
    ChartSeries smooth = series("smoothed", "#ff7f0e", Column{g.x, smooth_centered(g.y, half)});
    smooth.width = 2.0;
    c.series = {raw, smooth};
    charts.push_back(std::move(c));
  }
  {
    ChartSpec c = base("Memory", "GiB");
    c.y_from_zero = true;
    c.series = {series("peak memory", "#17becf", column(tr, "mem_gib"))};
    charts.push_back(std::move(c));
  }
  bool has_bpb = std::any_of(ev.begin(), ev.end(), [](const MetricsRecord& r) { return r.has("eval_bpb"); });
  if (has_bpb) {
    ChartSpec c = base("Held-out bits per byte", "bits / UTF-8 byte");
    ChartSeries s = series("eval bpb", "#d62728", column(ev, "eval_bpb"));
    s.markers = true;
    c.series = {s};
    charts.push_back(std::move(c));
  }
  bool has_data = std::any_of(tr.begin(), tr.end(), [](const MetricsRecord& r) { return r.has("data_s"); });
  if (has_data) {
    ChartSpec c = base("Time waiting for data", "seconds per log interval");
    c.y_from_zero = true;
    c.series = {series("data wait", "#7f7f7f", column(tr, "data_s"))};
    charts.push_back(std::move(c));
  }

  // Summary numbers.
  std::ostringstream sum;
  if (!tr.empty()) {
    const auto& last = tr.back();
    row(sum, "last logged step", std::to_string(last.step));
    if (last.has("tokens")) row(sum, "tokens seen", human(last.get("tokens")));
    if (last.has("elapsed_s")) row(sum, "elapsed", duration(last.get("elapsed_s")));
    // The last logged loss, and the mean of the last 2*half+1 logs (the smoothing window) beside it.
    std::vector<double> tail;
    for (auto it = loss.y.rbegin(); it != loss.y.rend() && static_cast<int64_t>(tail.size()) < 2 * half + 1; ++it)
      if (std::isfinite(*it)) tail.push_back(*it);
    double tail_mean = kNaN;
    if (!tail.empty()) {
      tail_mean = 0;
      for (double v : tail) tail_mean += v;
      tail_mean /= static_cast<double>(tail.size());
    }
    row(sum, "train loss (last)", human(last_finite(loss.y)) + "  (mean of the last " + std::to_string(tail.size()) +
                                      " logs: " + human(tail_mean) + ")");
    // Throughput and MFU: median over logged intervals, leaving out the first (compilation, warm-up).
    auto steady = [&](const std::string& key) {
      std::vector<double> v = column(tr, key).y;
      if (v.size() > 2) v.erase(v.begin());
      return median(v);
    };
    row(sum, "tokens/s (median)", human(steady("tokens_per_s")));
    double mfu = steady("mfu");
    row(sum, "MFU (median)", std::isfinite(mfu) ? strip_zeros(fmt("%.2f", 100 * mfu)) + " %" : "–");
    row(sum, "peak memory", std::isfinite(max_finite(column(tr, "mem_gib").y))
                                 ? human(max_finite(column(tr, "mem_gib").y)) + " GiB"
                                 : "–");
    row(sum, "grad norm (median)", human(median(column(tr, "grad_norm").y)));
    int64_t nonfinite = 0;
    for (double v : loss.y) nonfinite += std::isfinite(v) ? 0 : 1;
    if (nonfinite) row(sum, "non-finite loss logs", std::to_string(nonfinite));
  }
  if (!ev.empty()) {
    const MetricsRecord* best = nullptr;
    for (const auto& r : ev)
      if (std::isfinite(r.get("eval_loss")) && (!best || r.get("eval_loss") < best->get("eval_loss"))) best = &r;
    const auto& last = ev.back();
    row(sum, "eval loss (last)",
        human(last.get("eval_loss")) + " @ step " + std::to_string(last.step) + "  (ppl " + human(last.get("eval_ppl")) +
            (last.has("eval_bpb") ? ", " + human(last.get("eval_bpb")) + " bits/byte" : std::string()) + ")");
    if (best) row(sum, "eval loss (best)", human(best->get("eval_loss")) + " @ step " + std::to_string(best->step));
  }
  std::string commit, command, started;
  if (!in.run_json.empty()) {
    nlohmann::json rj = nlohmann::json::parse(in.run_json, nullptr, false);
    if (rj.is_array() && !rj.empty()) rj = rj.back();
    if (rj.is_object()) {
      commit = rj.value("commit", "");
      started = rj.value("started", "");
      if (rj.contains("command") && rj["command"].is_array())
        for (const auto& a : rj["command"]) command += (command.empty() ? "" : " ") + a.get<std::string>();
    }
  }
  if (!commit.empty()) row(sum, "commit", commit);
  if (!started.empty()) row(sum, "started (last launch)", started);
  if (!command.empty()) row(sum, "command", command);

  std::string notes;
  if (log.partial_last_line) notes += "The last line of the metrics file was incomplete (run still writing?) and was skipped. ";
  if (log.skipped_lines) notes += str(log.skipped_lines, " unreadable line(s) skipped. ");
  if (log.rewinds) notes += str("The run was resumed ", log.rewinds, " time(s); records after each resume point were replaced by the resumed run's. ");

  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    << "<title>subq run report: " << html_escape(in.run_name) << "</title>\n<style>\n"
    << "body{font-family:sans-serif;margin:24px;color:#222;background:#f4f5f7}\n"
    << "h1{font-size:22px;margin:0 0 4px}\n.sub{color:#666;margin:0 0 16px;font-size:13px}\n"
    << ".charts{display:flex;flex-wrap:wrap;gap:12px}\n"
    << ".chart{background:#fff;border:1px solid #ddd;border-radius:4px}\n"
    << "table{border-collapse:collapse;background:#fff;border:1px solid #ddd;margin-bottom:16px;font-size:13px}\n"
    << "th,td{text-align:left;padding:4px 12px;border-bottom:1px solid #eee;vertical-align:top}\n"
    << "th{color:#555;font-weight:normal;white-space:nowrap}\ntd{font-family:monospace}\n"
    << "pre{background:#fff;border:1px solid #ddd;padding:10px;font-size:12px;overflow:auto}\n"
    << "details{margin-top:16px}\nsummary{cursor:pointer;font-weight:bold}\n.note{color:#a60;font-size:13px}\n"
    << "</style>\n</head>\n<body>\n";
  o << "<h1>" << html_escape(in.run_name) << "</h1>\n";
  o << "<p class=\"sub\">subq training report, generated " << html_escape(utc_now_iso()) << " from "
    << html_escape(log.path) << " (" << tr.size() << " train and " << ev.size() << " eval records)</p>\n";
  if (!notes.empty()) o << "<p class=\"note\">" << html_escape(notes) << "</p>\n";
  o << "<table class=\"summary\">\n" << sum.str() << "</table>\n";
  o << "<div class=\"charts\">\n";
  for (const auto& c : charts) o << render_svg_chart(c);
  o << "</div>\n";
  if (!in.config_yaml.empty())
    o << "<details open><summary>Resolved config (config.yaml)</summary>\n<pre>" << html_escape(in.config_yaml)
      << "</pre></details>\n";
  if (!in.run_json.empty())
    o << "<details><summary>Launches (run.json)</summary>\n<pre>" << html_escape(in.run_json) << "</pre></details>\n";
  o << "</body>\n</html>\n";
  return o.str();
}

std::string write_run_report(const std::string& run_dir, const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec))
    throw InputError(str("run directory ", run_dir, " does not exist: give the directory a `subq train` run wrote "
                         "(run.out_dir/run.name)"));
  RunDir rd{run_dir};
  MetricsLog log = read_metrics(rd.metrics_path());
  ReportInputs in;
  fs::path name = fs::absolute(run_dir).lexically_normal();
  if (name.filename().empty()) name = name.parent_path();  // "runs/x/" -> "runs/x"
  in.run_name = name.filename().string();
  if (fs::exists(rd.config_path(), ec)) in.config_yaml = fsx::read_file(rd.config_path(), "run config");
  if (fs::exists(rd.path + "/run.json", ec)) in.run_json = fsx::read_file(rd.path + "/run.json", "run.json");
  std::string path = out.empty() ? rd.path + "/report.html" : out;
  fsx::write_file_atomic(path, render_report_html(log, in));
  return path;
}

}  // namespace subq::train
