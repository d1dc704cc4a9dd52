// test_core.cpp — errors and CHECK macros, atomic file writes, progress rendering, logging to a file.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "subq/core/error.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/core/progress.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

TEST_CASE("CHECK macros throw InternalError with expression and location", "[core]") {
  try {
    int a = 2, b = 3;
    SUBQ_CHECK_EQ(a, b, "sizes differ");
    FAIL("no throw");
  } catch (const subq::InternalError& e) {
    std::string w = e.what();
    CHECK(w.find("test_core.cpp") != std::string::npos);
    CHECK(w.find("(a) == (b)") != std::string::npos);
    CHECK(w.find("(2 vs 3)") != std::string::npos);
    CHECK(w.find("sizes differ") != std::string::npos);
    CHECK(e.exit_code() == 1);
  }
  CHECK_NOTHROW([] { SUBQ_CHECK(1 + 1 == 2); }());
  CHECK(subq::ConfigError("x").exit_code() == 2);
  CHECK(subq::InputError("x").exit_code() == 2);
  CHECK(subq::UsageError("x").exit_code() == 2);
  CHECK(subq::RuntimeError("x").exit_code() == 1);
}

TEST_CASE("atomic writes replace whole files and leave no temporaries", "[core]") {
  fs::path dir = fs::temp_directory_path() / ("subq-core-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string p = (dir / "f.txt").string();
  subq::fsx::write_file_atomic(p, "first");
  subq::fsx::write_file_atomic(p, "second");
  CHECK(subq::fsx::read_file(p) == "second");
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) { (void)e; ++n; }
  CHECK(n == 1);
  CHECK_THROWS_AS(subq::fsx::write_file_atomic((dir / "no/such/dir/f").string(), "x"), subq::RuntimeError);
  CHECK_THROWS_AS(subq::fsx::read_file((dir / "missing").string(), "tokenizer"), subq::InputError);
  fs::remove_all(dir);
}

TEST_CASE("progress renders done/total, rate and ETA", "[core]") {
  subq::Progress p("tokenizing", 200, "files", 1e9);
  p.advance(50);
  p.set_postfix("12 MB");
  std::string s = p.render();
  CHECK(s.find("tokenizing:") == 0);
  CHECK(s.find("50/200 files") != std::string::npos);
  CHECK(s.find("25.0%") != std::string::npos);
  CHECK(s.find("files/s") != std::string::npos);
  CHECK(s.find("12 MB") != std::string::npos);
  CHECK(p.done() == 50);
  subq::Progress u("reading", 0, "", 1e9);
  u.advance(3);
  CHECK(u.render().find("3 [") != std::string::npos);
  CHECK(subq::Progress::format_duration(5.25) == "5.2s");
  CHECK(subq::Progress::format_duration(125) == "2m05s");
  CHECK(subq::Progress::format_duration(3720) == "1h02m");
}

TEST_CASE("log messages reach the log file", "[core]") {
  fs::path f = fs::temp_directory_path() / ("subq-log-" + std::to_string(::getpid()) + ".log");
  subq::log::add_file(f.string());
  subq::log::info("hello from the test");
  subq::log::debug("debug goes to the file");
  subq::log::close_file();
  std::string text = subq::fsx::read_file(f.string());
  CHECK(text.find("hello from the test") != std::string::npos);
  CHECK(text.find("debug goes to the file") != std::string::npos);
  CHECK_THROWS_AS(subq::log::set_level("loud"), subq::UsageError);
  fs::remove(f);
}
