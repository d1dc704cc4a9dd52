// progress.h — a progress display for long work: done/total, rate, ETA.
//
// On a terminal (stderr is a TTY) it redraws one line at most 10 times a second; otherwise (CI, logs,
// pipes) it prints a plain line every `interval_s` seconds (SUBQ_PROGRESS_INTERVAL overrides, default
// 10) and a final line. Thread-safe: workers may call advance() concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace subq {

class Progress {
 public:
  // total <= 0 means unknown (no ETA). `unit` names what is counted ("files", "steps", "MB").
  Progress(std::string label, int64_t total, std::string unit = "", double interval_s = -1);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(int64_t n = 1);
  void set(int64_t done);
  // Extra text shown after the counters ("loss 3.21").
  void set_postfix(const std::string& text);
  // Prints the final line (idempotent; the destructor calls it).
  void finish();

  int64_t done() const;
  // The line that would be shown now (for tests and logs).
  std::string render() const;
  // Formats seconds as "1h02m", "3m05s", "12.3s".
  static std::string format_duration(double seconds);

 private:
  void maybe_print(bool force);
  std::string render_locked() const;
  using clock = std::chrono::steady_clock;
  std::string label_, unit_, postfix_;
  int64_t total_, done_ = 0;
  bool tty_, finished_ = false;
  double interval_s_;
  clock::time_point start_, last_print_;
  mutable std::mutex mu_;
};

}  // namespace subq
