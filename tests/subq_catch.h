// subq_catch.h — one include for Catch2 v2 (Debian 12: single header) and v3 (Ubuntu 24.04).
// SUBQ_SKIP(msg) skips the rest of a test with a message on both (v2 has no SKIP: it warns and returns).
#pragma once

#include <string>

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
#define SUBQ_SKIP(msg) SKIP(msg)
// v2's string matcher name, so tests can use Catch::Matchers::Contains on both versions
namespace Catch::Matchers {
inline StringContainsMatcher Contains(const std::string& str, CaseSensitive cs = CaseSensitive::Yes) {
  return ContainsSubstring(str, cs);
}
}  // namespace Catch::Matchers
#else
#include <catch2/catch.hpp>
#define SUBQ_SKIP(msg)        \
  do {                        \
    WARN("SKIPPED: " << msg); \
    return;                   \
  } while (0)
#endif

#include <cstdio>
#include <cstdlib>
#include <string>

namespace subq::test {
// Root of the source tree (set by CTest), for configs and fixtures.
inline std::string source_dir() {
  const char* s = std::getenv("SUBQ_SOURCE_DIR");
  return s ? s : ".";
}
// ../shared/data beside the checkout (or $SUBQ_SHARED_DATA), "" when absent: tests that need it skip.
inline std::string shared_data_dir() {
  const char* e = std::getenv("SUBQ_SHARED_DATA");
  std::string p = e ? e : source_dir() + "/../shared/data";
  FILE* f = std::fopen((p + "/README.md").c_str(), "r");
  if (!f) return "";
  std::fclose(f);
  return p;
}
}  // namespace subq::test
