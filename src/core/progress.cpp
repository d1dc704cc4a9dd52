// progress.cpp — see progress.h. Writes to stderr so that stdout stays machine-readable.
#include "subq/core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "subq/core/error.h"

namespace subq {

Progress::Progress(std::string label, int64_t total, std::string unit, double interval_s)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  tty_ = isatty(fileno(stderr)) && !std::getenv("CI");
  if (interval_s < 0) {
    const char* env = std::getenv("SUBQ_PROGRESS_INTERVAL");
    interval_s = env ? std::atof(env) : 10.0;
  }
  interval_s_ = tty_ ? 0.1 : interval_s;
  start_ = last_print_ = clock::now();
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {
  }
}

void Progress::advance(int64_t n) {
  std::lock_guard<std::mutex> g(mu_);
  done_ += n;
  maybe_print(false);
}

void Progress::set(int64_t done) {
  std::lock_guard<std::mutex> g(mu_);
  done_ = done;
  maybe_print(false);
}

void Progress::set_postfix(const std::string& text) {
  std::lock_guard<std::mutex> g(mu_);
  postfix_ = text;
}

int64_t Progress::done() const {
  std::lock_guard<std::mutex> g(mu_);
  return done_;
}

void Progress::finish() {
  std::lock_guard<std::mutex> g(mu_);
  if (finished_) return;
  finished_ = true;
  std::string line = render_locked();
  if (tty_) std::fprintf(stderr, "\r\033[2K%s\n", line.c_str());
  else std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

std::string Progress::render() const {
  std::lock_guard<std::mutex> g(mu_);
  return render_locked();
}

std::string Progress::render_locked() const {
  double el = std::chrono::duration<double>(clock::now() - start_).count();
  double rate = el > 0 ? done_ / el : 0;
  std::string u = unit_.empty() ? "" : " " + unit_;
  char rbuf[32];
  std::snprintf(rbuf, sizeof rbuf, rate >= 100 ? "%.0f" : "%.2f", rate);
  std::string s = label_ + ": ";
  if (total_ > 0) {
    char pct[16];
    std::snprintf(pct, sizeof pct, "%5.1f%%", 100.0 * done_ / total_);
    s += str(pct, " ", done_, "/", total_, u, " [", format_duration(el), "<",
             format_duration(rate > 0 ? (total_ - done_) / rate : -1), ", ", rbuf, u.empty() ? " it" : u, "/s]");
  } else {
    s += str(done_, u, " [", format_duration(el), ", ", rbuf, u.empty() ? " it" : u, "/s]");
  }
  if (!postfix_.empty()) s += " " + postfix_;
  return s;
}

void Progress::maybe_print(bool force) {
  if (finished_) return;
  auto now = clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  if (!force && since < interval_s_) return;
  last_print_ = now;
  std::string line = render_locked();
  if (tty_) std::fprintf(stderr, "\r\033[2K%s", line.c_str());
  else std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace subq
