// cli_run.h — running the `subq` binary from e2e tests: run(args) executes it in the source tree
// (SUBQ_BINARY, set by CTest) and returns exit status and output (stderr merged unless told otherwise).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "subq_catch.h"

namespace subq::test {

struct Result {
  int rc;
  std::string out;
};

inline std::string binary() {
  const char* b = std::getenv("SUBQ_BINARY");
  return b ? b : "subq";
}

inline Result run(const std::string& args, bool merge_stderr = true) {
  std::string cmd = "cd '" + source_dir() + "' && '" + binary() + "' " + args +
                    (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

inline bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

}  // namespace subq::test
