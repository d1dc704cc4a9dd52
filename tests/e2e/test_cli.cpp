// test_cli.cpp — the `subq` binary as a user runs it: help for every subcommand, version, config
// explain/check, exit codes (0 ok, 2 bad config/usage) and messages, train --dry-run writing the run
// directory with a re-runnable resolved config.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "e2e/cli_run.h"
#include "subq_catch.h"

namespace fs = std::filesystem;

namespace {

using subq::test::binary;
using subq::test::has;
using subq::test::Result;
using subq::test::run;

}  // namespace

TEST_CASE("every subcommand has --help", "[cli]") {
  auto r = run("--help");
  CHECK(r.rc == 0);
  for (const char* sub : {"version", "config", "train", "eval"}) {
    INFO(sub);
    CHECK(has(r.out, sub));
    auto h = run(std::string(sub) + " --help");
    CHECK(h.rc == 0);
    CHECK(has(h.out, "Usage"));
  }
}

TEST_CASE("bad usage exits 2", "[cli]") {
  CHECK(run("").rc == 2);
  CHECK(run("no-such-command").rc == 2);
  CHECK(run("train").rc == 2);  // --config is required
  CHECK(run("config").rc == 2);
}

TEST_CASE("version reports the build", "[cli]") {
  auto r = run("version --no-probe");
  CHECK(r.rc == 0);
  CHECK(has(r.out, "libtorch 2.11.0"));
  CHECK(has(r.out, "gpus seen:"));
  auto j = run("version --json --no-probe");
  CHECK(j.rc == 0);
  CHECK(has(j.out, "\"commit\""));
}

TEST_CASE("config --explain and --check", "[cli]") {
  auto e = run("config --explain");
  CHECK(e.rc == 0);
  CHECK(has(e.out, "model.d_model"));
  CHECK(has(e.out, "hidden width"));
  CHECK(run("config --check configs/quickstart.yaml").rc == 0);
  auto p = run("config --check configs/quickstart.yaml --print --set model.d_model=512 --set model.n_heads=8");
  CHECK(p.rc == 0);
  CHECK(has(p.out, "d_model: 512"));
}

TEST_CASE("a misspelled key exits 2 naming the key and the nearest valid one", "[cli]") {
  fs::path f = fs::temp_directory_path() / ("subq-cli-" + std::to_string(::getpid()) + ".yaml");
  std::ofstream(f) << "include: " << subq::test::source_dir() << "/configs/quickstart.yaml\ntrain:\n  stesp: 10\n";
  auto r = run("config --check " + f.string());
  CHECK(r.rc == 2);
  CHECK(has(r.out, "train.stesp"));
  CHECK(has(r.out, "did you mean 'train.steps'"));
  auto s = run("config --check configs/quickstart.yaml --set optim.lr=-1");
  CHECK(s.rc == 2);
  CHECK(has(s.out, "optim.lr"));
  CHECK(run("config --check configs/does-not-exist.yaml").rc == 2);
  fs::remove(f);
}

TEST_CASE("train --dry-run writes a re-runnable resolved config", "[cli]") {
  fs::path out = fs::temp_directory_path() / ("subq-runs-" + std::to_string(::getpid()));
  auto r = run("train --config configs/quickstart.yaml --dry-run --set run.out_dir=" + out.string() +
               " --set run.name=t1 --set model.n_layers=3");
  CHECK(r.rc == 0);
  fs::path cfg = out / "t1" / "config.yaml";
  REQUIRE(fs::exists(cfg));
  CHECK(fs::exists(out / "t1" / "run.json"));
  CHECK(fs::exists(out / "t1" / "train.log"));
  auto again = run("config --check " + cfg.string() + " --print");
  CHECK(again.rc == 0);
  CHECK(has(again.out, "n_layers: 3"));
  fs::remove_all(out);
}
