// test_config.cpp — the config system: parsing, defaults, every error class, overrides, includes, layered
// files, round trip of the resolved config.
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "subq/core/config.h"
#include "subq/core/error.h"
#include "subq/core/run_config.h"
#include "subq_catch.h"
#include "test_support.h"

namespace fs = std::filesystem;
using subq::ConfigError;
using subq::RunConfig;
using subq::config::Source;

namespace {
using subq::test::TempDir;

RunConfig from_text(const std::string& text, std::vector<std::string> sets = {}) {
  return subq::config::load<RunConfig>(Source{"test.yaml", std::move(sets), text.empty() ? "{}" : text});
}

// The ConfigError message for loading `text`, or "" when it loads.
std::string error_of(const std::string& text, std::vector<std::string> sets = {}) {
  try {
    from_text(text, std::move(sets));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }


}  // namespace

TEST_CASE("defaults and typed values", "[config]") {
  RunConfig c = from_text("model:\n  d_model: 512\n  n_heads: 8\noptim:\n  lr: 1e-3\n  betas: [0.9, 0.99]\n"
                          "train:\n  steps: 1e4\nrun:\n  device: cpu\n  seed: 7\n");
  CHECK(c.model.d_model == 512);
  CHECK(c.model.n_heads == 8);
  CHECK(c.model.n_layers == 4);  // default kept
  CHECK(c.optim.lr == Approx(1e-3));
  CHECK(c.optim.betas == std::vector<double>{0.9, 0.99});
  CHECK(c.train.steps == 10000);  // integral float accepted for ints
  CHECK(c.run.device == "cpu");
  CHECK(c.run.seed == 7);
}

TEST_CASE("unknown keys name the key and the nearest valid one", "[config]") {
  std::string e = error_of("model:\n  d_modle: 512\n");
  CHECK(has(e, "unknown config key 'model.d_modle'"));
  CHECK(has(e, "did you mean 'model.d_model'"));
  CHECK(has(e, "test.yaml:2:"));
  // unknown section
  e = error_of("modle:\n  d_model: 512\n");
  CHECK(has(e, "'modle'"));
  CHECK(has(e, "did you mean 'model'"));
  // right name, wrong section
  e = error_of("model:\n  lr: 0.1\n");
  CHECK(has(e, "did you mean 'optim.lr'"));
}

TEST_CASE("wrong types name key, value and expectation", "[config]") {
  std::string e = error_of("model:\n  d_model: big\n");
  CHECK(has(e, "model.d_model = 'big'"));
  CHECK(has(e, "expected an integer"));
  CHECK(has(error_of("model:\n  d_model: 1.5\n"), "expected an integer"));
  CHECK(has(error_of("optim:\n  lr: fast\n"), "expected a number"));
  CHECK(has(error_of("model:\n  tie_embeddings: maybe\n"), "expected true or false"));
  CHECK(has(error_of("optim:\n  betas: 0.9\n"), "expected a list"));
  CHECK(has(error_of("model: 5\n"), "expected a section"));
  CHECK(has(error_of("model:\n  d_model: [1, 2]\n"), "expected an integer"));
  CHECK(has(error_of("model:\n  d_model:\n"), "has no value"));
  CHECK(has(error_of("- a\n- b\n"), "top level of a config must be a mapping"));
}

TEST_CASE("out-of-range values and bad choices", "[config]") {
  CHECK(has(error_of("model:\n  d_model: 0\n"), "must be >= 1"));
  CHECK(has(error_of("optim:\n  lr: 0\n"), "must be > 0"));
  CHECK(has(error_of("optim:\n  betas: [0.9, 1.5]\n"), "optim.betas[1]"));
  CHECK(has(error_of("optim:\n  betas: [0.9]\n"), "exactly two values"));
  std::string e = error_of("schedule:\n  kind: cosin\n");
  CHECK(has(e, "must be one of: cosine, wsd, linear, constant"));
  CHECK(has(e, "did you mean 'cosine'"));
  CHECK(has(error_of("model:\n  d_model: 100\n  n_heads: 3\n"), "divisible by n_heads"));
  CHECK(has(error_of("run:\n  device: tpu\n"), "not a device"));
  CHECK(error_of("run:\n  device: cuda:1\n").empty());
  CHECK(has(error_of("optim:\n  lr: .nan\n"), "finite"));
}

TEST_CASE("YAML syntax errors point at the line", "[config]") {
  std::string e = error_of("model:\n  d_model: 5\n   n_layers: [1\n");
  CHECK(has(e, "YAML syntax error"));
  CHECK(has(e, "test.yaml:"));
}

TEST_CASE("overrides by dotted path", "[config]") {
  RunConfig c = from_text("model:\n  d_model: 512\n  n_heads: 8\n",
                          {"model.d_model=1024", "optim.betas=[0.8, 0.9]", "run.name=abc", "train.steps=5"});
  CHECK(c.model.d_model == 1024);
  CHECK(c.optim.betas == std::vector<double>{0.8, 0.9});
  CHECK(c.run.name == "abc");
  CHECK(c.train.steps == 5);
  // later overrides win
  CHECK(from_text("", {"train.steps=5", "train.steps=6"}).train.steps == 6);
  std::string e = error_of("", {"model.d_modle=3"});
  CHECK(has(e, "--set model.d_modle=3"));
  CHECK(has(e, "did you mean 'model.d_model'"));
  CHECK(has(error_of("", {"model.d_model"}), "expected key.path=value"));
  CHECK(has(error_of("", {"model.d_model=abc"}), "--set model.d_model=abc"));
  CHECK(has(error_of("", {"model..x=1"}), "empty component"));
}

TEST_CASE("includes merge depth-first; the including file wins", "[config]") {
  TempDir d;
  d.write("sizes/small.yaml", "model:\n  d_model: 128\n  n_layers: 2\n  n_heads: 2\n");
  d.write("base.yaml", "include: sizes/small.yaml\ntrain:\n  steps: 10\n");
  std::string run = d.write("run.yaml", "include: [base.yaml]\nmodel:\n  n_layers: 6\n");
  RunConfig c = subq::config::load<RunConfig>(Source{run, {}, ""});
  CHECK(c.model.d_model == 128);
  CHECK(c.model.n_layers == 6);
  CHECK(c.train.steps == 10);
  // errors inside an included file name that file
  d.write("bad.yaml", "model:\n  n_layer: 3\n");
  std::string bad = d.write("uses_bad.yaml", "include: bad.yaml\n");
  try {
    subq::config::load<RunConfig>(Source{bad, {}, ""});
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK(has(e.what(), "bad.yaml:2:"));
    CHECK(has(e.what(), "did you mean 'model.n_layers'"));
  }
}

TEST_CASE("layers: more files merged on top, later ones winning", "[config]") {
  TempDir d;
  d.write("models/small.yaml", "model:\n  d_model: 128\n  n_layers: 2\n  n_heads: 2\n");
  std::string task = d.write("task.yaml", "include: models/small.yaml\ntrain:\n  steps: 10\nmodel:\n  max_seq_len: 99\n");
  std::string big = d.write("models/big.yaml", "model:\n  d_model: 512\n  n_heads: 8\n");
  std::string steps = d.write("steps.yaml", "train:\n  steps: 20\n");
  Source src{task, {"train.batch_size=3"}, ""};
  src.layers = {big, steps};
  RunConfig c = subq::config::load<RunConfig>(src);
  CHECK(c.model.d_model == 512);     // the layer wins over the task file's include
  CHECK(c.model.n_heads == 8);
  CHECK(c.model.n_layers == 2);      // kept: the layer does not set it
  CHECK(c.model.max_seq_len == 99);  // kept from the first file
  CHECK(c.train.steps == 20);        // the last layer wins
  CHECK(c.train.batch_size == 3);    // overrides come last
  // run.name joins the files' names; an explicit one stays
  RunConfig r = subq::load_run_config(std::vector<std::string>{task, big}, {});
  CHECK(r.run.name == "task-big");
  CHECK(subq::load_run_config(std::vector<std::string>{task}, {}).run.name == "task");
  CHECK(subq::load_run_config(std::vector<std::string>{task, big}, {"run.name=x"}).run.name == "x");
  // errors in a layer point into the layer
  std::string bad = d.write("bad_layer.yaml", "model:\n  d_modle: 3\n");
  src.layers = {bad};
  try {
    subq::config::load<RunConfig>(src);
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK(has(e.what(), "bad_layer.yaml:2:"));
  }
  src.layers = {(d.path / "nope.yaml").string()};
  CHECK_THROWS_AS(subq::config::load<RunConfig>(src), ConfigError);
}

TEST_CASE("missing files and include cycles", "[config]") {
  TempDir d;
  CHECK_THROWS_AS(subq::config::load<RunConfig>(Source{(d.path / "nope.yaml").string(), {}, ""}), ConfigError);
  std::string m = d.write("m.yaml", "include: missing.yaml\n");
  try {
    subq::config::load<RunConfig>(Source{m, {}, ""});
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK(has(e.what(), "included file not found"));
    CHECK(has(e.what(), "m.yaml:1:10"));
  }
  d.write("a.yaml", "include: b.yaml\n");
  std::string b = d.write("b.yaml", "include: a.yaml\n");
  try {
    subq::config::load<RunConfig>(Source{b, {}, ""});
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK(has(e.what(), "include cycle"));
  }
  std::string self = d.write("self.yaml", "include: self.yaml\n");
  CHECK_THROWS_AS(subq::config::load<RunConfig>(Source{self, {}, ""}), ConfigError);
}

TEST_CASE("the resolved config round-trips exactly", "[config]") {
  RunConfig c = from_text("model:\n  d_model: 384\n  n_heads: 6\n  norm_eps: 1e-6\noptim:\n  lr: 3e-4\n"
                          "  no_decay: [bias, 'true', '']\nrun:\n  name: '123'\n");
  std::string y = subq::config::to_yaml(c);
  RunConfig c2 = from_text(y);
  CHECK(subq::config::to_yaml(c2) == y);
  CHECK(c2.model.norm_eps == c.model.norm_eps);
  CHECK(c2.optim.lr == c.optim.lr);
  CHECK(c2.optim.no_decay == c.optim.no_decay);
  CHECK(c2.run.name == "123");
  // the commented form loads too
  RunConfig c3 = from_text(subq::config::to_yaml(c, true));
  CHECK(subq::config::to_yaml(c3) == y);
}

TEST_CASE("explain lists every key with type and doc", "[config]") {
  auto keys = subq::config::describe_keys(subq::config::schema_of<RunConfig>());
  REQUIRE(keys.size() > 30);
  for (const auto& k : keys) {
    INFO(k.path);
    CHECK(!k.doc.empty());
    CHECK(!k.type.empty());
  }
  std::string t = subq::config::explain(subq::config::schema_of<RunConfig>(), "optim");
  CHECK(has(t, "optim.lr"));
  CHECK(!has(t, "model.d_model"));
  CHECK_THROWS_AS(subq::config::explain(subq::config::schema_of<RunConfig>(), "nothing"), subq::UsageError);
}

TEST_CASE("edit distance", "[config]") {
  CHECK(subq::config::edit_distance("", "abc") == 3);
  CHECK(subq::config::edit_distance("d_modle", "d_model") == 2);
  CHECK(subq::config::edit_distance("same", "same") == 0);
}

TEST_CASE("the shipped configs load", "[config]") {
  for (const auto& e : fs::recursive_directory_iterator(subq::test::source_dir() + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    // model-size files are fragments; they must load on their own too
    INFO(e.path().string());
    CHECK_NOTHROW(subq::config::load<RunConfig>(Source{e.path().string(), {}, ""}));
  }
}
