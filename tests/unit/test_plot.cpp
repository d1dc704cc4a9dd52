// test_plot.cpp — the training report: metrics.jsonl parsing (partial last line, junk lines, resumed
// runs, nulls), clear errors for missing/empty files, and the structure of the SVG charts and HTML page
// (balanced tags, path data made only of M/L commands with the expected number of points).
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "subq/core/error.h"
#include "subq/train/plot.h"
#include "subq_catch.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace subq::train;

namespace {
using subq::test::TempDir;

// Number of points in an SVG path made of "M x y" / "L x y" commands; -1 when anything else is there.
int64_t path_points(const std::string& d) {
  size_t i = 0;
  int64_t n = 0;
  auto skip_ws = [&] { while (i < d.size() && d[i] == ' ') ++i; };
  auto number = [&] {
    size_t s = i;
    if (i < d.size() && d[i] == '-') ++i;
    size_t digits = i;
    while (i < d.size() && (std::isdigit(static_cast<unsigned char>(d[i])) || d[i] == '.')) ++i;
    return i > digits && i > s;
  };
  while (true) {
    skip_ws();
    if (i == d.size()) break;
    char c = d[i++];
    if (c != 'M' && c != 'L') return -1;
    if (n == 0 && c != 'M') return -1;
    if (!number()) return -1;
    if (i >= d.size() || d[i] != ' ') return -1;
    ++i;
    if (!number()) return -1;
    ++n;
  }
  return n;
}

// All d="..." attributes of <path> elements.
std::vector<std::string> paths(const std::string& svg) {
  std::vector<std::string> out;
  size_t p = 0;
  while ((p = svg.find("<path", p)) != std::string::npos) {
    size_t d = svg.find(" d=\"", p);
    size_t e = svg.find('"', d + 4);
    out.push_back(svg.substr(d + 4, e - d - 4));
    p = e;
  }
  return out;
}

size_t count(const std::string& s, const std::string& sub) {
  size_t n = 0, p = 0;
  while ((p = s.find(sub, p)) != std::string::npos) {
    ++n;
    p += sub.size();
  }
  return n;
}

// Tags balance (open/close/self-closing) and '&' only starts an entity: the XML-ish well-formedness the
// report needs to render inline.
bool balanced_markup(const std::string& s, std::string& why) {
  std::vector<std::string> stack;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '&') {
      size_t semi = s.find(';', i);
      if (semi == std::string::npos || semi - i > 8) {
        why = "bare & at " + std::to_string(i);
        return false;
      }
      i = semi + 1;
      continue;
    }
    if (s[i] != '<') {
      ++i;
      continue;
    }
    size_t e = s.find('>', i);
    if (e == std::string::npos) {
      why = "unterminated tag";
      return false;
    }
    std::string tag = s.substr(i + 1, e - i - 1);
    i = e + 1;
    if (tag.empty() || tag[0] == '!') continue;  // doctype
    if (tag[0] == '/') {
      std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) {
        why = "unexpected </" + name + "> (open: " + (stack.empty() ? "none" : stack.back()) + ")";
        return false;
      }
      stack.pop_back();
      continue;
    }
    std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (tag.back() == '/' || name == "meta") continue;
    stack.push_back(name);
  }
  if (!stack.empty()) {
    why = "unclosed <" + stack.back() + ">";
    return false;
  }
  return true;
}

std::string synthetic_metrics(int n_log, int log_every, int eval_every) {
  std::string s;
  for (int i = 1; i <= n_log; ++i) {
    int step = i * log_every;
    double loss = 2.0 + 8.0 * std::exp(-step / 300.0) + 0.05 * std::sin(step * 0.7);
    s += subq::str("{\"step\":", step, ",\"loss\":", loss, ",\"lr\":", 3e-4 * std::min(1.0, step / 100.0),
                   ",\"grad_norm\":", 1.0 + 0.1 * std::cos(step), ",\"tokens\":", step * 4096,
                   ",\"tokens_per_s\":", 51234.5 + 100 * std::sin(step), ",\"mfu\":0.41,\"mem_gib\":",
                   10.5 + 0.001 * step, ",\"elapsed_s\":", step * 0.08, ",\"data_s\":0.002}\n");
    if (step % eval_every == 0)
      s += subq::str("{\"step\":", step, ",\"eval_loss\":", loss + 0.1, ",\"eval_ppl\":", std::exp(loss + 0.1),
                     ",\"eval_bpb\":", (loss + 0.1) / std::log(2.0) / 3.5, "}\n");
  }
  return s;
}


void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

}  // namespace

TEST_CASE("metrics parser keeps train and eval records and tolerates a partial last line", "[plot]") {
  std::string text = synthetic_metrics(20, 10, 50);
  MetricsLog log = parse_metrics(text + "{\"step\":210,\"loss\":2.1,\"l");
  CHECK(log.train.size() == 20);
  CHECK(log.eval.size() == 4);
  CHECK(log.partial_last_line);
  CHECK(log.skipped_lines == 0);
  CHECK(log.train.front().step == 10);
  CHECK(log.train.back().step == 200);
  CHECK(log.train[3].get("tokens") == Approx(40 * 4096));
  CHECK(std::isnan(log.train[3].get("no_such_key")));
  CHECK(log.eval[1].step == 100);

  // A complete last line without its newline is still a record.
  MetricsLog l2 = parse_metrics("{\"step\":1,\"loss\":3}\n{\"step\":2,\"loss\":2.5}");
  CHECK(l2.train.size() == 2);
  CHECK_FALSE(l2.partial_last_line);

  // Junk in the middle is skipped and counted; null becomes a gap (NaN); events without loss are ignored.
  MetricsLog l3 = parse_metrics("{\"step\":1,\"loss\":3}\nnot json\n[1,2]\n{\"loss\":1}\n{\"step\":2,\"loss\":null}\n"
                                "{\"step\":3,\"event\":\"checkpoint\"}\n{\"step\":4,\"loss\":2}\n");
  CHECK(l3.skipped_lines == 3);
  REQUIRE(l3.train.size() == 3);
  CHECK(std::isnan(l3.train[1].get("loss")));
  CHECK(l3.train[1].has("loss"));
}

TEST_CASE("metrics parser: a resumed run replaces the records after its resume point", "[plot]") {
  std::string text =
      "{\"step\":10,\"loss\":5}\n{\"step\":20,\"loss\":4}\n{\"step\":20,\"eval_loss\":4.2}\n"
      "{\"step\":30,\"loss\":3.5}\n{\"step\":40,\"loss\":3.4}\n{\"step\":40,\"eval_loss\":3.9}\n"
      // killed after step 40; resumed from the checkpoint at step 20
      "{\"step\":30,\"loss\":3.6}\n{\"step\":40,\"loss\":3.3}\n{\"step\":40,\"eval_loss\":3.8}\n";
  MetricsLog log = parse_metrics(text);
  CHECK(log.rewinds == 1);
  REQUIRE(log.train.size() == 4);
  CHECK(log.train[2].get("loss") == Approx(3.6));
  CHECK(log.train[3].get("loss") == Approx(3.3));
  REQUIRE(log.eval.size() == 2);
  CHECK(log.eval[0].step == 20);
  CHECK(log.eval[1].get("eval_loss") == Approx(3.8));
}

TEST_CASE("missing, empty and record-less metrics files are clear input errors", "[plot]") {
  TempDir t;
  auto msg = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const subq::InputError& e) {
      return e.what();
    }
    return "no InputError";
  };
  std::string m1 = msg([&] { read_metrics((t.path / "metrics.jsonl").string()); });
  CHECK(m1.find("no metrics file") != std::string::npos);
  CHECK(m1.find("subq train") != std::string::npos);
  write(t.path / "metrics.jsonl", "\n  \n");
  std::string m2 = msg([&] { read_metrics((t.path / "metrics.jsonl").string()); });
  CHECK(m2.find("is empty") != std::string::npos);
  write(t.path / "metrics.jsonl", "hello\nworld\n");
  std::string m3 = msg([&] { read_metrics((t.path / "metrics.jsonl").string()); });
  CHECK(m3.find("no training or eval records") != std::string::npos);
  std::string m4 = msg([&] { write_run_report((t.path / "nope").string()); });
  CHECK(m4.find("does not exist") != std::string::npos);
}

TEST_CASE("ticks are 1-2-5 steps with compact labels", "[plot]") {
  double lo = 0.13, hi = 9.7;
  nice_range(lo, hi);
  CHECK(lo == Approx(0.0));
  CHECK(hi == Approx(10.0));
  auto t = nice_ticks(lo, hi);
  REQUIRE(t.size() == 6);
  CHECK(t[1] == Approx(2.0));
  CHECK(format_tick(15000, 5000) == "15k");
  CHECK(format_tick(2500000, 500000) == "2.5M");
  CHECK(format_tick(1500000, 100000) == "1.5M");
  CHECK(format_tick(150000, 50000) == "150k");
  CHECK(format_tick(2.5e-4, 5e-5) == "2.5e-4");
  CHECK(format_tick(3e-4, 1e-4) == "3e-4");
  CHECK(format_tick(0.25, 0.05) == "0.25");
  CHECK(format_tick(1200, 200) == "1200");
  CHECK(format_tick(0, 0.1) == "0");
  double a = 5, b = 5;  // degenerate range widens
  nice_range(a, b);
  CHECK(a < 5);
  CHECK(b > 5);
}

TEST_CASE("smoothing and decimation", "[plot]") {
  std::vector<double> y{1, 2, NAN, 4, 5, 6, 7};
  auto s = smooth_centered(y, 2);
  CHECK(s[0] == Approx(1.0));                    // ends are their own centre: no lag
  CHECK(s[1] == Approx((1 + 2) / 2.0));          // half-window 1 at index 1; the NaN is left out
  CHECK(std::isnan(s[2]));
  CHECK(s[3] == Approx((2 + 4 + 5 + 6) / 4.0));
  CHECK(s[4] == Approx((4 + 5 + 6 + 7) / 4.0));
  CHECK(s[6] == Approx(7.0));
  std::vector<double> line{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto sl = smooth_centered(line, 3);
  for (size_t i = 0; i < line.size(); ++i) CHECK(sl[i] == Approx(line[i]));  // a line is unchanged
  CHECK(smooth_centered(line, 0) == line);
  std::vector<double> x(10000), v(10000);
  for (int i = 0; i < 10000; ++i) {
    x[i] = i;
    v[i] = (i == 7777) ? 100.0 : std::sin(i * 0.01);
  }
  std::vector<double> ox, oy;
  decimate_minmax(x, v, 500, ox, oy);
  CHECK(ox.size() <= 1000);
  CHECK(ox.size() >= 500);
  CHECK(*std::max_element(oy.begin(), oy.end()) == 100.0);  // the spike survives
  CHECK(std::is_sorted(ox.begin(), ox.end()));
  decimate_minmax(std::vector<double>{1, 2, 3}, std::vector<double>{4, 5, 6}, 500, ox, oy);
  CHECK(ox.size() == 3);
}

TEST_CASE("an SVG chart has one well-formed path per series with every point", "[plot]") {
  ChartSpec c;
  c.title = "Loss <&> test";
  c.x_label = "step";
  c.y_label = "loss";
  ChartSeries a;
  a.label = "a";
  ChartSeries b;
  b.label = "b";
  b.markers = true;
  for (int i = 0; i < 37; ++i) {
    a.x.push_back(i * 10);
    a.y.push_back(5.0 - i * 0.1);
  }
  for (int i = 0; i < 4; ++i) {
    b.x.push_back(i * 100);
    b.y.push_back(4.0 - i * 0.3);
  }
  c.series = {a, b};
  std::string svg = render_svg_chart(c);
  std::string why;
  CHECK(balanced_markup(svg, why));
  INFO(why);
  auto ps = paths(svg);
  REQUIRE(ps.size() == 2);
  CHECK(path_points(ps[0]) == 37);
  CHECK(path_points(ps[1]) == 4);
  CHECK(count(svg, "<circle") == 4);
  CHECK(svg.find("Loss &lt;&amp;&gt; test") != std::string::npos);
  // All coordinates inside the drawing.
  for (const auto& d : ps) CHECK(d.find('-') == std::string::npos);

  // A NaN breaks the line into two sub-paths (a second M) and drops that point.
  c.series[0].y[10] = NAN;
  auto ps2 = paths(render_svg_chart(c));
  CHECK(path_points(ps2[0]) == 36);
  CHECK(count(ps2[0], "M") == 2);

  // Long series are decimated.
  ChartSpec big;
  ChartSeries s;
  for (int i = 0; i < 20000; ++i) {
    s.x.push_back(i);
    s.y.push_back(std::cos(i * 0.001));
  }
  big.series = {s};
  auto pb = paths(render_svg_chart(big));
  REQUIRE(pb.size() == 1);
  CHECK(path_points(pb[0]) <= big.max_points_per_series);
  CHECK(path_points(pb[0]) > 100);

  ChartSpec empty;
  empty.title = "nothing";
  std::string e = render_svg_chart(empty);
  CHECK(e.find("no data") != std::string::npos);
  CHECK(paths(e).empty());
}

TEST_CASE("the report is a self-contained page with every chart", "[plot]") {
  TempDir t;
  write(t.path / "metrics.jsonl", synthetic_metrics(40, 25, 250) + "{\"step\":1025,\"lo");
  write(t.path / "config.yaml", "model:\n  arch: transformer  # <tiny>\n");
  write(t.path / "run.json", "[{\"commit\":\"abc1234\",\"command\":[\"subq\",\"train\"],\"started\":\"2026-01-01T00:00:00Z\"}]");
  std::string out = write_run_report(t.path.string());
  CHECK(out == (t.path / "report.html").string());
  std::ifstream f(out);
  std::string html((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string why;
  CHECK(balanced_markup(html, why));
  INFO(why);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  CHECK(html.find("https://") == std::string::npos);
  CHECK(count(html, "<svg") == 8);  // loss, lr, tokens/s, MFU, grad norm, memory, bpb, data wait
  for (const char* title : {"Loss", "Learning rate", "Throughput", "Model FLOPs utilisation", "Gradient norm", "Memory"})
    CHECK(html.find(std::string(">") + title) != std::string::npos);
  auto ps = paths(html);
  for (const auto& d : ps) CHECK(path_points(d) > 0);
  CHECK(path_points(ps[0]) == 40);  // raw train loss
  CHECK(path_points(ps[1]) == 40);  // smoothed
  CHECK(path_points(ps[2]) == 4);   // eval
  CHECK(html.find("arch: transformer  # &lt;tiny&gt;") != std::string::npos);
  CHECK(html.find("abc1234") != std::string::npos);
  CHECK(html.find("incomplete") != std::string::npos);
  CHECK(html.find("41 %") != std::string::npos);  // median MFU
  CHECK(html.find("<th>last logged step</th><td>1000</td>") != std::string::npos);

  std::string custom = write_run_report(t.path.string() + "/", (t.path / "r2.html").string());
  CHECK(fs::exists(custom));
}
