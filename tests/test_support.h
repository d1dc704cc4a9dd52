// test_support.h — small helpers the unit tests share: a temporary directory that cleans up after itself,
// and a shell command run with its exit status and output (stderr merged), for the tests that drive
// python3 / the subq binary as a child process.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "subq_catch.h"

namespace subq::test {

// A fresh, empty directory under the system's temporary directory ("subq-<tag>-<pid>-<n>"), removed with
// everything in it when the object goes out of scope.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("subq-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // path / name as a string
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  // Writes text to path / name (parent directories created); returns that path.
  std::string write(const std::string& name, const std::string& text) const {
    const std::filesystem::path p = path / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }
};

struct ShellRun {
  int rc;           // exit status (-1 when the child did not exit normally)
  std::string out;  // stdout and stderr
};
// Runs cmd with /bin/sh, stderr merged into stdout (or, merge_stderr = false, discarded).
inline ShellRun run_shell(const std::string& cmd, bool merge_stderr = true) {
  FILE* p = popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  REQUIRE(p);
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace subq::test
