// log.cpp — spdlog behind subq/core/log.h: console (stderr, coloured on a TTY) plus an optional file.
// This is the only translation unit that includes spdlog (see CMakeLists.txt on the two {fmt}s).
#include "subq/core/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>

namespace subq::log {
namespace {

struct State {
  std::mutex mu;
  std::shared_ptr<spdlog::sinks::stderr_color_sink_mt> console;
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> file;
  std::shared_ptr<spdlog::logger> logger;
  int rank = 0;
  State() {
    console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    console->set_pattern("%^[%H:%M:%S %L]%$ %v");
    console->set_level(spdlog::level::info);
    logger = std::make_shared<spdlog::logger>("subq", spdlog::sinks_init_list{console});
    logger->set_level(spdlog::level::debug);
    logger->flush_on(spdlog::level::warn);
  }
};

State& state() {
  static State s;
  return s;
}

spdlog::level::level_enum to_spd(Level l) {
  switch (l) {
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void set_level(const std::string& level) {
  Level l;
  if (level == "debug") l = Level::debug;
  else if (level == "info") l = Level::info;
  else if (level == "warn" || level == "warning") l = Level::warn;
  else if (level == "error") l = Level::error;
  else throw UsageError(str("unknown log level '", level, "'; use debug, info, warn or error"));
  auto& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  s.console->set_level(to_spd(l));
}

void add_file(const std::string& path) {
  auto& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> f;
  try {
    f = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  } catch (const spdlog::spdlog_ex& e) {
    throw RuntimeError(str("cannot open log file ", path, ": ", e.what()));
  }
  f->set_pattern("[%Y-%m-%d %H:%M:%S.%e %L] %v");
  f->set_level(spdlog::level::debug);
  auto& sinks = s.logger->sinks();
  if (s.file) sinks.erase(std::remove(sinks.begin(), sinks.end(), s.file), sinks.end());
  s.file = f;
  sinks.push_back(f);
}

void close_file() {
  auto& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  if (!s.file) return;
  s.file->flush();
  auto& sinks = s.logger->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), s.file), sinks.end());
  s.file.reset();
}

void set_rank(int rank) {
  auto& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  s.rank = rank;
  if (rank != 0) s.console->set_level(spdlog::level::warn);
  s.console->set_pattern(rank ? "%^[%H:%M:%S %L]%$ [rank " + std::to_string(rank) + "] %v" : "%^[%H:%M:%S %L]%$ %v");
}

void write(Level level, const std::string& msg) { state().logger->log(to_spd(level), "{}", msg); }

void flush() { state().logger->flush(); }

}  // namespace subq::log
