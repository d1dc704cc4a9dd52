// log.h — logging for every subq target (console + the run directory's log file).
//
// The interface takes std::string only, so files that include Torch (which ships its own {fmt}) never
// see spdlog or fmt. Build messages with subq::str(...). Logs go to stderr; results that a caller may
// pipe (JSON, resolved configs) go to stdout.
#pragma once

#include <string>

#include "subq/core/error.h"

namespace subq::log {

enum class Level { debug, info, warn, error };

// Sets the console level ("debug", "info", "warn", "error"); throws UsageError on an unknown name.
void set_level(const std::string& level);
// Also writes every message (at debug level and above) to `path`, appending. Replaces an earlier file.
void add_file(const std::string& path);
// Stops writing to the log file (flushes it).
void close_file();
// Rank prefix for multi-process runs ("[rank 3] "); ranks other than 0 log at warn and above by default.
void set_rank(int rank);

void write(Level level, const std::string& msg);
inline void debug(const std::string& m) { write(Level::debug, m); }
inline void info(const std::string& m) { write(Level::info, m); }
inline void warn(const std::string& m) { write(Level::warn, m); }
inline void error(const std::string& m) { write(Level::error, m); }
void flush();

}  // namespace subq::log
