// fs.h — small file helpers used everywhere: atomic writes and whole-file reads with clear errors.
#pragma once

#include <string>

namespace subq::fsx {

// Writes `content` to `path` atomically: a temporary file in the same directory, fsync, rename.
// A reader never sees a half-written file, and a crash leaves the old file intact.
void write_file_atomic(const std::string& path, const std::string& content);
// Reads a whole file; InputError naming `what` (e.g. "tokenizer") when it is missing or unreadable.
std::string read_file(const std::string& path, const std::string& what = "file");
// fsyncs a directory so that renames inside it are durable.
void fsync_dir(const std::string& dir);

}  // namespace subq::fsx
