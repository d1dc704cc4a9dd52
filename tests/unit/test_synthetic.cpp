// test_synthetic.cpp — the synthetic state-tracking suite (data/synthetic.h, eval/synthetic_eval.h):
//  * every generator against an independent checker written here from the token names (a recursive-
//    descent evaluator for the arithmetic tasks, permutations read from their one-line names, counts),
//    over many examples and every length class;
//  * vocabularies, length rules and the training length distribution (chi-square against uniform);
//  * the training source: determinism, exact resume from state(), data-parallel partition, the refusal
//    of another task's cursor, the batch layout (padding, doc_start, position_ids);
//  * the accuracy evaluation on fake models with known predictions: an oracle (1.0), a constant model
//    (the exact expected fractions), an oracle wrong at one position (seq vs token vs final accuracy);
//  * config errors (max_seq_len, lengths a task cannot take, vocab_size) and the shipped configs;
//  * the trainer on a synthetic task: accuracy in metrics.jsonl and bitwise-exact resume.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include <torch/torch.h>

#include "subq/core/config.h"
#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"
#include "subq/data/synthetic.h"
#include "subq/eval/synthetic_eval.h"
#include "subq/models/model.h"
#include "subq/train/lm_data.h"
#include "subq/train/run_data.h"
#include "subq/train/trainer.h"
#include "subq_catch.h"

namespace fs = std::filesystem;
using subq::data::SyntheticConfig;
using subq::data::SyntheticExample;
using subq::data::SyntheticTask;

namespace {

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

SyntheticConfig task_cfg(const std::string& task, int64_t train_len = 64, int64_t min_len = 1) {
  SyntheticConfig c;
  c.task = task;
  c.train_len = train_len;
  c.train_min_len = min_len;
  c.eval_lens = {train_len};
  return c;
}

std::vector<std::string> names_of(const SyntheticTask& t, const std::vector<int64_t>& ids) {
  std::vector<std::string> out;
  for (int64_t id : ids) {
    REQUIRE(id >= 0);
    REQUIRE(id < t.vocab_size());
    out.push_back(t.tokens()[static_cast<size_t>(id)]);
  }
  return out;
}

// ---- an independent evaluator for the arithmetic strings (standard precedence, unary minus, brackets)
struct ArithParser {
  const std::vector<std::string>& s;
  int64_t m;
  size_t i = 0;
  int64_t md(int64_t v) const { return ((v % m) + m) % m; }
  int64_t expr() {
    int64_t v = term();
    while (i < s.size() && (s[i] == "+" || s[i] == "-")) {
      const bool plus = s[i++] == "+";
      const int64_t r = term();
      v = md(plus ? v + r : v - r);
    }
    return v;
  }
  int64_t term() {
    int64_t v = factor();
    while (i < s.size() && s[i] == "*") {
      ++i;
      v = md(v * factor());
    }
    return v;
  }
  int64_t factor() {
    REQUIRE(i < s.size());
    if (s[i] == "-") {
      ++i;
      return md(-factor());
    }
    if (s[i] == "(") {
      ++i;
      const int64_t v = expr();
      REQUIRE(i < s.size());
      REQUIRE(s[i] == ")");
      ++i;
      return v;
    }
    const int64_t d = std::stoll(s[i]);
    REQUIRE(d >= 0);
    REQUIRE(d < m);
    ++i;
    return d;
  }
};

// The targets a task must have for `inputs`, computed from token names only (kIgnoreTarget = unsupervised).
std::vector<int64_t> reference_targets(const SyntheticTask& task, const SyntheticConfig& cfg,
                                       const std::vector<int64_t>& inputs) {
  const auto nm = names_of(task, inputs);
  const size_t T = nm.size();
  std::vector<int64_t> tg(T, subq::data::kIgnoreTarget);
  const std::string& t = task.name();
  if (t == "parity") {
    int ones = 0;
    for (size_t k = 0; k + 1 < T; ++k) {
      REQUIRE((nm[k] == "0" || nm[k] == "1"));
      ones += nm[k] == "1";
    }
    REQUIRE(nm.back() == "=");
    tg.back() = task.token_id(ones % 2 ? "1" : "0");
  } else if (t == "mod_arith" || t == "mod_arith_brackets") {
    REQUIRE(nm.back() == "=");
    std::vector<std::string> expr(nm.begin(), nm.end() - 1);
    if (t == "mod_arith") {
      // alternating operand / operator, operands at even positions
      REQUIRE(expr.size() % 2 == 1);
      for (size_t k = 0; k < expr.size(); ++k) {
        const bool is_op = expr[k] == "+" || expr[k] == "-" || expr[k] == "*";
        REQUIRE(is_op == (k % 2 == 1));
        if (is_op) REQUIRE(std::find(cfg.arith_ops.begin(), cfg.arith_ops.end(), expr[k]) != cfg.arith_ops.end());
      }
    } else {
      int depth = 0;
      for (const auto& x : expr) {
        depth += x == "(" ? 1 : x == ")" ? -1 : 0;
        REQUIRE(depth >= 0);
        if (x == "*") REQUIRE(std::find(cfg.arith_ops.begin(), cfg.arith_ops.end(), "*") != cfg.arith_ops.end());
      }
      REQUIRE(depth == 0);
    }
    ArithParser p{expr, cfg.modulus};
    const int64_t v = p.expr();
    REQUIRE(p.i == expr.size());
    tg.back() = task.token_id(std::to_string(v));
  } else if (t == "s3" || t == "s5") {
    const size_t n = t == "s3" ? 3 : 5;
    std::vector<int> state(n);
    for (size_t k = 0; k < n; ++k) state[k] = static_cast<int>(k);
    for (size_t k = 0; k < T; ++k) {
      REQUIRE(nm[k].size() == n);
      std::vector<int> x(n);
      for (size_t j = 0; j < n; ++j) x[j] = nm[k][j] - '1';
      std::vector<int> next(n);
      for (size_t j = 0; j < n; ++j) next[j] = x[static_cast<size_t>(state[j])];  // state first, then x
      state = next;
      std::string name;
      for (int v : state) name += std::to_string(v + 1);
      tg[k] = task.token_id(name);
    }
  } else if (t == "majority") {
    int64_t diff = 0;
    for (size_t k = 0; k < T; ++k) {
      REQUIRE((nm[k] == "a" || nm[k] == "b"));
      diff += nm[k] == "a" ? 1 : -1;
      tg[k] = task.token_id(diff > 0 ? "a" : diff < 0 ? "b" : "tie");
    }
  } else if (t == "anbn" || t == "anbncn") {
    const std::vector<std::string> groups = t == "anbn" ? std::vector<std::string>{"a", "b"}
                                                        : std::vector<std::string>{"a", "b", "c"};
    REQUIRE(T % groups.size() == 0);
    const size_t n = T / groups.size();
    for (size_t k = 0; k < T; ++k) REQUIRE(nm[k] == groups[k / n]);
    for (size_t k = n; k < T; ++k) tg[k] = task.token_id(k + 1 < T ? nm[k + 1] : "$");
  } else {
    FAIL("no checker for task " << t);
  }
  return tg;
}

// ---- fake models with known predictions
using Predictor = std::function<std::vector<int64_t>(const std::vector<int64_t>& inputs)>;  // one id per position

class FakeModel : public subq::models::LanguageModel {
 public:
  FakeModel(const subq::models::ModelConfig& c, Predictor p) : LanguageModel(c), predict_(std::move(p)) {
    dummy = register_parameter("dummy", torch::zeros({1}));
  }
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor&) override {
    const int64_t B = tokens.size(0), T = tokens.size(1), V = cfg_.vocab_size;
    auto logits = torch::zeros({B, T, V});
    auto lg = logits.accessor<float, 3>();
    auto tk = tokens.to(torch::kCPU).contiguous();
    auto a = tk.accessor<int64_t, 2>();
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> row;
      for (int64_t t = 0; t < T; ++t) row.push_back(a[b][t]);
      while (!row.empty() && row.back() == subq::data::kSyntheticPad) row.pop_back();  // right padding
      const auto pred = predict_(row);
      for (size_t t = 0; t < pred.size(); ++t)
        if (pred[t] >= 0) lg[b][static_cast<int64_t>(t)][pred[t]] = 20.0f;
    }
    return logits;
  }
  std::unique_ptr<subq::models::DecodeState> new_decode_state(int64_t, int64_t) override { return nullptr; }
  torch::Tensor step(const torch::Tensor& t, subq::models::DecodeState&) override { return forward(t, {}); }
  double flops_per_token(int64_t) const override { return 0; }
  torch::Tensor dummy;

 private:
  Predictor predict_;
};

subq::models::ModelConfig fake_cfg(int64_t vocab) {
  subq::models::ModelConfig m;
  m.vocab_size = vocab;
  return m;
}

fs::path temp_root() {
  static fs::path root = [] {
    fs::path r = fs::temp_directory_path() / ("subq-synthetic-" + std::to_string(::getpid()));
    fs::remove_all(r);
    fs::create_directories(r);
    subq::log::set_level("warn");
    return r;
  }();
  return root;
}

std::string config_error(const std::string& yaml) {
  try {
    subq::config::load<subq::RunConfig>(subq::config::Source{"test.yaml", {}, yaml});
  } catch (const subq::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("vocabularies and length rules", "[synthetic]") {
  struct Want {
    std::string task;
    int64_t vocab, min_len, step;
    bool running;
  };
  for (const auto& w : std::vector<Want>{{"parity", 4, 2, 1, false},
                                         {"mod_arith", 10, 2, 2, false},
                                         {"mod_arith_brackets", 12, 2, 1, false},
                                         {"s3", 7, 1, 1, true},
                                         {"s5", 121, 1, 1, true},
                                         {"majority", 4, 1, 1, true},
                                         {"anbn", 4, 2, 2, true},
                                         {"anbncn", 5, 3, 3, true}}) {
    INFO(w.task);
    SyntheticTask t(task_cfg(w.task));
    CHECK(t.vocab_size() == w.vocab);
    CHECK(t.min_len() == w.min_len);
    CHECK(t.len_step() == w.step);
    CHECK(t.running() == w.running);
    CHECK(t.tokens()[0] == "<pad>");
    std::set<std::string> uniq(t.tokens().begin(), t.tokens().end());
    CHECK(uniq.size() == t.tokens().size());
    CHECK(t.floor_len(w.min_len - 1) == 0);
    CHECK(t.floor_len(w.min_len) == w.min_len);
    CHECK(t.floor_len(w.min_len + w.step * 7 + w.step - 1) == w.min_len + w.step * 7);
    CHECK(t.ceil_len(1) == w.min_len);
    CHECK(t.ceil_len(w.min_len + 1) == (w.step == 1 ? w.min_len + 1 : w.min_len + w.step));
  }
  // modulus changes the arithmetic vocabularies
  auto c = task_cfg("mod_arith");
  c.modulus = 7;
  CHECK(SyntheticTask(c).vocab_size() == 12);
  // permutations: lexicographic one-line names, identity first, all distinct
  SyntheticTask s3(task_cfg("s3"));
  CHECK(s3.tokens() == std::vector<std::string>{"<pad>", "123", "132", "213", "231", "312", "321"});
  SyntheticTask s5(task_cfg("s5"));
  CHECK(s5.tokens()[1] == "12345");
  CHECK(s5.tokens()[120] == "54321");
  CHECK(std::is_sorted(s5.tokens().begin() + 1, s5.tokens().end()));
}

TEST_CASE("every generator matches the independent checker", "[synthetic]") {
  for (const auto& name : SyntheticConfig::task_names()) {
    for (const std::vector<std::string>& ops :
         {std::vector<std::string>{"+", "-", "*"}, std::vector<std::string>{"+", "-"}, std::vector<std::string>{"*"}}) {
      if (name.rfind("mod_arith", 0) != 0 && ops.size() != 3) continue;
      INFO(name << " ops " << ops.size());
      auto cfg = task_cfg(name, 300);
      cfg.arith_ops = ops;
      cfg.modulus = name == "mod_arith" ? 7 : 5;
      SyntheticTask task(cfg);
      std::map<int64_t, int> target_counts;
      int64_t checked = 0;
      for (int64_t T = task.min_len(); T <= 300; T += task.len_step()) {
        for (uint64_t i = 0; i < (T < 40 ? 20u : 2u); ++i) {
          subq::data::SyntheticRng rng(11, 5, static_cast<uint64_t>(T) * 1000 + i);
          SyntheticExample ex = task.generate(T, rng);
          REQUIRE(static_cast<int64_t>(ex.inputs.size()) == T);
          REQUIRE(ex.targets.size() == ex.inputs.size());
          for (int64_t id : ex.inputs) REQUIRE(id != subq::data::kSyntheticPad);
          const auto want = reference_targets(task, cfg, ex.inputs);
          INFO(task.render(ex.inputs));
          REQUIRE(ex.targets == want);
          for (int64_t y : ex.targets) {
            if (y == subq::data::kIgnoreTarget) continue;
            REQUIRE(y > 0);
            ++target_counts[y];
          }
          // one-answer tasks supervise exactly the last position; running tasks the last one too
          REQUIRE(ex.targets.back() != subq::data::kIgnoreTarget);
          if (!task.running()) {
            for (size_t k = 0; k + 1 < ex.targets.size(); ++k) REQUIRE(ex.targets[k] == subq::data::kIgnoreTarget);
          }
          ++checked;
        }
      }
      CHECK(checked > 50);
      // the answers are not degenerate: several distinct target classes occur
      CHECK(target_counts.size() >= (name == "anbn" ? 2u : name == "anbncn" ? 3u : name == "parity" ? 2u : 3u));
    }
  }
}

TEST_CASE("the same key gives the same example; different keys differ", "[synthetic]") {
  SyntheticTask t(task_cfg("s5"));
  subq::data::SyntheticRng a(1, 2, 3), b(1, 2, 3), c(1, 2, 4), d(2, 2, 3);
  auto ea = t.generate(50, a), eb = t.generate(50, b), ec = t.generate(50, c), ed = t.generate(50, d);
  CHECK(ea.inputs == eb.inputs);
  CHECK(ea.inputs != ec.inputs);
  CHECK(ea.inputs != ed.inputs);
  // uniform(n) stays in range and covers it
  subq::data::SyntheticRng r(0, 0, 0);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const int64_t v = r.uniform(7);
    REQUIRE(v >= 0);
    REQUIRE(v < 7);
    ++hist[static_cast<size_t>(v)];
  }
  for (int h : hist) CHECK(std::abs(h - 1000) < 150);
}

TEST_CASE("training lengths are uniform over the task's valid lengths", "[synthetic]") {
  struct Case {
    std::string task;
    int64_t min_len, max_len;
    std::vector<int64_t> lengths;
  };
  for (const auto& c : std::vector<Case>{{"parity", 1, 11, {2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
                                         {"mod_arith", 3, 12, {4, 6, 8, 10, 12}},
                                         {"anbncn", 1, 20, {3, 6, 9, 12, 15, 18}}}) {
    INFO(c.task);
    subq::data::SyntheticSourceOptions o;
    o.cfg = task_cfg(c.task, c.max_len, c.min_len);
    o.batch_size = 1;
    o.seed = 9;
    subq::data::SyntheticSource src(o);
    std::map<int64_t, int64_t> hist;
    const int64_t N = 12000;
    for (int64_t g = 0; g < N; ++g) ++hist[static_cast<int64_t>(src.example(static_cast<uint64_t>(g)).inputs.size())];
    REQUIRE(hist.size() == c.lengths.size());
    const double expect = static_cast<double>(N) / static_cast<double>(c.lengths.size());
    double chi2 = 0;
    for (int64_t L : c.lengths) {
      REQUIRE(hist.count(L));
      chi2 += std::pow(static_cast<double>(hist[L]) - expect, 2) / expect;
    }
    // chi-square with <= 9 degrees of freedom: 30 is far beyond its 0.999 quantile (27.9)
    CHECK(chi2 < 30.0);
  }
}

TEST_CASE("the source is deterministic, resumes exactly and partitions across ranks", "[synthetic]") {
  subq::data::SyntheticSourceOptions o;
  o.cfg = task_cfg("majority", 40, 5);
  o.batch_size = 6;
  o.seed = 21;
  subq::data::SyntheticSource a(o), b(o);
  std::vector<subq::data::Batch> first;
  for (int i = 0; i < 5; ++i) {
    auto x = a.next(), y = b.next();
    CHECK(torch::equal(x.inputs, y.inputs));
    CHECK(torch::equal(x.targets, y.targets));
    first.push_back(x);
  }
  // restore from the state after 2 batches: batches 3, 4, 5 again, bitwise
  subq::data::SyntheticSource c(o);
  c.next();
  c.next();
  const auto st = c.state();
  CHECK(st["kind"] == "synthetic");
  CHECK(st["consumed"] == 12);
  o.seed = 999;  // a new process with another run.seed still continues the saved stream
  subq::data::SyntheticSource d(o);
  d.restore(st);
  for (int i = 2; i < 5; ++i) {
    auto x = d.next();
    CHECK(torch::equal(x.inputs, first[static_cast<size_t>(i)].inputs));
    CHECK(torch::equal(x.targets, first[static_cast<size_t>(i)].targets));
  }
  // another seed gives another stream
  subq::data::SyntheticSource e(o);
  CHECK(!torch::equal(e.next().inputs.narrow(1, 0, 5), first[0].inputs.narrow(1, 0, 5)));

  // two ranks of world 2 take the global examples 0, 2, 4 and 1, 3, 5 of the single-process stream
  o.seed = 21;
  o.batch_size = 3;
  subq::data::SyntheticSource whole(o);
  o.world = 2;
  o.rank = 0;
  subq::data::SyntheticSource r0(o);
  o.rank = 1;
  subq::data::SyntheticSource r1(o);
  for (int step = 0; step < 2; ++step) {
    const uint64_t base = static_cast<uint64_t>(step) * 6;
    auto b0 = r0.next(), b1 = r1.next();
    auto w0 = subq::data::make_synthetic_batch({whole.example(base), whole.example(base + 2), whole.example(base + 4)},
                                               torch::kCPU);
    auto w1 = subq::data::make_synthetic_batch(
        {whole.example(base + 1), whole.example(base + 3), whole.example(base + 5)}, torch::kCPU);
    CHECK(torch::equal(b0.inputs, w0.inputs));
    CHECK(torch::equal(b1.targets, w1.targets));
  }
  CHECK(r0.consumed() == 12);

  // a cursor of another task config is refused, naming the fix
  subq::data::SyntheticSourceOptions p;
  p.cfg = task_cfg("parity", 40);
  subq::data::SyntheticSource other(p);
  try {
    other.restore(st);
    FAIL("expected an error");
  } catch (const subq::InputError& err) {
    CHECK(has(err.what(), "another synthetic stream"));
  }
  CHECK_THROWS_AS(other.restore(nlohmann::json{{"kind", "token_windows"}}), subq::InputError);
}

TEST_CASE("batch layout: one example per row, right-padded", "[synthetic]") {
  SyntheticTask t(task_cfg("parity"));
  subq::data::SyntheticRng r1(0, 0, 1), r2(0, 0, 2);
  std::vector<SyntheticExample> ex{t.generate(3, r1), t.generate(7, r2)};
  auto b = subq::data::make_synthetic_batch(ex, torch::kCPU);
  REQUIRE(b.inputs.sizes() == torch::IntArrayRef({2, 7}));
  CHECK(b.targets.sizes() == b.inputs.sizes());
  CHECK(b.inputs.dtype() == torch::kInt64);
  auto in = b.inputs.accessor<int64_t, 2>();
  auto tg = b.targets.accessor<int64_t, 2>();
  for (int64_t k = 0; k < 3; ++k) CHECK(in[0][k] == ex[0].inputs[static_cast<size_t>(k)]);
  for (int64_t k = 3; k < 7; ++k) {
    CHECK(in[0][k] == subq::data::kSyntheticPad);
    CHECK(tg[0][k] == subq::data::kIgnoreTarget);
  }
  CHECK(tg[0][2] == ex[0].targets[2]);
  CHECK(tg[1][6] == ex[1].targets[6]);
  CHECK(b.doc_start.index({torch::indexing::Slice(), 0}).all().item<bool>());
  CHECK(b.doc_start.sum().item<int64_t>() == 2);
  CHECK(torch::equal(b.position_ids[1], torch::arange(7, torch::kInt64)));
  CHECK(torch::equal(b.position_ids[0], torch::arange(7, torch::kInt64)));
}

TEST_CASE("eval sets: exact and range lengths, fixed by eval_seed", "[synthetic]") {
  auto cfg = task_cfg("anbncn", 30);
  cfg.eval_lens = {10, 40, 100};
  SyntheticTask t(cfg);
  auto exact = subq::data::synthetic_eval_lengths(t, cfg, cfg.eval_lens, "k");
  REQUIRE(exact.size() == 3);
  CHECK(exact[0].lo == 9);
  CHECK(exact[0].hi == 9);
  CHECK(exact[2].hi == 99);
  cfg.eval_len_mode = "range";
  cfg.train_min_len = 4;
  auto range = subq::data::synthetic_eval_lengths(t, cfg, cfg.eval_lens, "k");
  CHECK(range[0].lo == 6);  // first valid length >= train_min_len
  CHECK(range[0].hi == 9);
  CHECK(range[1].lo == 12);  // (10, 40]
  CHECK(range[1].hi == 39);
  CHECK(range[2].lo == 42);
  std::set<size_t> seen;
  for (int64_t i = 0; i < 200; ++i) {
    auto e = subq::data::synthetic_eval_example(t, cfg, range[1], i);
    REQUIRE(e.inputs.size() >= 12);
    REQUIRE(e.inputs.size() <= 39);
    seen.insert(e.inputs.size());
  }
  CHECK(seen.size() == 10);  // 12, 15, ..., 39
  // the eval set depends on eval_seed only, not on the training seed or other lengths
  SyntheticTask tp(task_cfg("parity"));
  auto pcfg = task_cfg("parity");
  auto el = subq::data::synthetic_eval_lengths(tp, pcfg, {50}, "k")[0];
  auto e1 = subq::data::synthetic_eval_example(tp, pcfg, el, 3);
  pcfg.eval_lens = {20, 50};
  CHECK(subq::data::synthetic_eval_example(tp, pcfg, el, 3).inputs == e1.inputs);
  pcfg.eval_seed = 7;
  CHECK(subq::data::synthetic_eval_example(tp, pcfg, el, 3).inputs != e1.inputs);
}

TEST_CASE("accuracy of an oracle is 1, of a constant model the exact expected fraction", "[synthetic][eval]") {
  for (const auto& name : SyntheticConfig::task_names()) {
    INFO(name);
    auto cfg = task_cfg(name, 24);
    cfg.eval_lens = {12, 30};
    cfg.eval_examples = 37;  // not a multiple of the batch size
    SyntheticTask task(cfg);
    subq::eval::SyntheticEvalOptions eo;
    eo.batch_size = 8;

    FakeModel oracle(fake_cfg(task.vocab_size()),
                     [&](const std::vector<int64_t>& in) { return reference_targets(task, cfg, in); });
    for (const auto& mode : {"exact", "range"}) {
      cfg.eval_len_mode = mode;
      auto r = subq::eval::evaluate_synthetic(oracle, cfg, cfg.eval_lens, eo);
      REQUIRE(r.lengths.size() == 2);
      for (const auto& l : r.lengths) {
        CHECK(l.examples == 37);
        CHECK(l.seq_acc() == 1.0);
        CHECK(l.tok_acc() == 1.0);
        CHECK(l.final_acc() == 1.0);
        CHECK(l.loss() < 0.1);
      }
    }
    cfg.eval_len_mode = "exact";

    // constant prediction of the most common answer of the first eval set
    const auto els = subq::data::synthetic_eval_lengths(task, cfg, cfg.eval_lens, "k");
    std::map<int64_t, int> freq;
    for (int64_t i = 0; i < cfg.eval_examples; ++i)
      for (int64_t y : subq::data::synthetic_eval_example(task, cfg, els[0], i).targets)
        if (y >= 0) ++freq[y];
    const int64_t c = std::max_element(freq.begin(), freq.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    FakeModel constant(fake_cfg(task.vocab_size()),
                       [&](const std::vector<int64_t>& in) { return std::vector<int64_t>(in.size(), c); });
    auto r = subq::eval::evaluate_synthetic(constant, cfg, cfg.eval_lens, eo);
    for (size_t j = 0; j < els.size(); ++j) {
      int64_t seq = 0, tok = 0, fin = 0, targets = 0;
      for (int64_t i = 0; i < cfg.eval_examples; ++i) {
        auto e = subq::data::synthetic_eval_example(task, cfg, els[j], i);
        bool all = true;
        int64_t last = -1;
        for (int64_t y : e.targets) {
          if (y < 0) continue;
          ++targets;
          tok += y == c;
          all = all && y == c;
          last = y;
        }
        seq += all;
        fin += last == c;
      }
      const auto& l = r.lengths[j];
      CHECK(l.targets == targets);
      CHECK(l.tok_correct == tok);
      CHECK(l.seq_correct == seq);
      CHECK(l.final_correct == fin);
      CHECK(l.tok_acc() == Approx(static_cast<double>(tok) / static_cast<double>(targets)));
    }
    CHECK(r.lengths[0].tok_acc() > 0.0);  // c is the most common answer
    CHECK(r.lengths[0].tok_acc() < 1.0);
  }
}

TEST_CASE("sequence, token and final accuracy differ as defined", "[synthetic][eval]") {
  auto cfg = task_cfg("majority", 16);
  cfg.eval_lens = {16};
  cfg.eval_examples = 10;
  SyntheticTask task(cfg);
  // right everywhere except position 0: no sequence is right, 15/16 of tokens are, every final one is
  FakeModel first_wrong(fake_cfg(task.vocab_size()), [&](const std::vector<int64_t>& in) {
    auto y = reference_targets(task, cfg, in);
    y[0] = task.token_id("tie");  // never the answer at t = 0
    return y;
  });
  auto r = subq::eval::evaluate_synthetic(first_wrong, cfg, cfg.eval_lens, {});
  CHECK(r.lengths[0].seq_acc() == 0.0);
  CHECK(r.lengths[0].tok_acc() == Approx(15.0 / 16.0));
  CHECK(r.lengths[0].final_acc() == 1.0);
  // wrong at the last position only
  FakeModel last_wrong(fake_cfg(task.vocab_size()), [&](const std::vector<int64_t>& in) {
    auto y = reference_targets(task, cfg, in);
    y.back() = task.token_id(task.tokens()[static_cast<size_t>(y.back())] == "a" ? "b" : "a");
    return y;
  });
  r = subq::eval::evaluate_synthetic(last_wrong, cfg, cfg.eval_lens, {});
  CHECK(r.lengths[0].seq_acc() == 0.0);
  CHECK(r.lengths[0].final_acc() == 0.0);
  CHECK(r.lengths[0].tok_acc() == Approx(15.0 / 16.0));

  // the JSON, table and trainer view
  auto j = r.to_json();
  CHECK(j["task"] == "majority");
  CHECK(j["running"] == true);
  CHECK(j["lengths"][0]["len"] == 16);
  CHECK(j["lengths"][0]["examples"] == 10);
  CHECK(j["lengths"][0]["targets"] == 160);
  CHECK(has(r.table(), "seq_acc"));
  auto lm = r.as_lm_result();
  CHECK(lm.tokens == 160);
  CHECK(lm.to_json()["eval_final_acc_16"] == 0.0);
  CHECK(lm.to_json()["eval_tok_acc_16"].get<double>() == Approx(15.0 / 16.0));
  CHECK(has(lm.summary, "seq_acc@16 0.0000"));

  // hand-made logits straight into add(): row 0 right at both supervised positions, row 1 wrong at one
  subq::eval::SyntheticLengthResult acc;
  auto logits = torch::zeros({2, 3, 4});
  auto targets = torch::tensor({-100, 2, 3, 1, -100, 2}, torch::kInt64).view({2, 3});
  logits[0][1][2] = 1;
  logits[0][2][3] = 1;
  logits[1][0][1] = 1;
  logits[1][2][3] = 1;  // wrong: target 2 at the last position
  acc.add(logits, targets);
  CHECK(acc.examples == 2);
  CHECK(acc.targets == 4);
  CHECK(acc.tok_correct == 3);
  CHECK(acc.seq_correct == 1);
  CHECK(acc.final_correct == 1);
  CHECK_THROWS_AS(acc.add(torch::zeros({1, 2, 4}), torch::full({1, 2}, -100, torch::kInt64)), subq::InternalError);
}

TEST_CASE("config errors name the key and the fix", "[synthetic][config]") {
  // the longest synthetic sequence must fit model.max_seq_len
  std::string e = config_error(
      "model:\n  max_seq_len: 1024\ndata:\n  task: synthetic\n  synthetic:\n    eval_lens: [128, 4096]\n");
  CHECK(has(e, "model.max_seq_len"));
  CHECK(has(e, "test.yaml:2:"));
  CHECK(has(e, "4096"));
  CHECK(has(e, "data.synthetic.eval_lens"));
  CHECK(has(config_error("model:\n  max_seq_len: 100\ndata:\n  task: synthetic\n  synthetic:\n    eval_lens: [64]\n"
                         "    train_eval_lens: [128]\n"),
            "128"));
  // only synthetic runs are held to it
  CHECK(config_error("model:\n  max_seq_len: 1024\ndata:\n  synthetic:\n    eval_lens: [4096]\n").empty());
  CHECK(has(config_error("data:\n  task: synthetic\n  synthetic:\n    task: s7\n"), "must be one of"));
  CHECK(has(config_error("data:\n  task: synthetic\n  synthetic:\n    eval_lens: [512, 128]\n"), "increasing"));
  CHECK(has(config_error("data:\n  synthetic:\n    train_min_len: 200\n"), "train_min_len"));
  CHECK(has(config_error("data:\n  synthetic:\n    arith_ops: [+, +]\n"), "twice"));
  CHECK(has(config_error("data:\n  synthetic:\n    arith_ops: [/]\n"), "must be one of"));
  CHECK(has(config_error("data:\n  task: tabular\n"), "must be one of: code, synthetic"));
  // length rules are checked when the config loads (`subq config --check` catches them)
  CHECK(has(config_error("data:\n  task: synthetic\n  synthetic:\n    task: anbncn\n    train_len: 2\n"),
            "data.synthetic.train_len = 2: task anbncn has sequences of length 3 + k * 3"));
  CHECK(has(config_error("data:\n  synthetic:\n    task: parity\n    eval_lens: [1, 8]\n"),
            "data.synthetic.eval_lens contains 1"));
  CHECK(has(config_error("data:\n  synthetic:\n    task: anbn\n    eval_len_mode: range\n    train_len: 8\n"
                         "    eval_lens: [8, 9]\n"),
            "the range (8, 9] holds no length"));
  CHECK(config_error("data:\n  synthetic:\n    task: anbn\n    train_len: 8\n    eval_lens: [8, 9]\n").empty());

  auto task_error = [](SyntheticConfig c) -> std::string {
    try {
      SyntheticTask t(c);
    } catch (const subq::ConfigError& err) {
      return err.what();
    }
    return "";
  };
  auto c = task_cfg("anbncn", 2);
  CHECK(has(task_error(c), "data.synthetic.train_len = 2"));
  c = task_cfg("parity", 64);
  c.eval_lens = {1, 64};
  CHECK(has(task_error(c), "data.synthetic.eval_lens contains 1"));
  c = task_cfg("anbncn", 30);
  c.eval_lens = {30, 31, 40};
  c.eval_len_mode = "range";
  CHECK(has(task_error(c), "holds no length"));
  c.eval_len_mode = "exact";
  CHECK(task_error(c).empty());
  c = task_cfg("anbn", 64, 64);
  c.train_len = 65;
  c.train_min_len = 65;
  CHECK(has(task_error(c), "no valid length"));
}

TEST_CASE("resolve_vocab_size takes the task's vocabulary; no tokenizer is read", "[synthetic][config]") {
  subq::RunConfig cfg;
  cfg.data.task = "synthetic";
  cfg.data.synthetic.task = "s5";
  cfg.data.synthetic.train_len = 100;
  cfg.data.tokenizer = "/nonexistent/tokenizer.json";
  CHECK(!subq::train::resolve_vocab_size(cfg));
  CHECK(cfg.model.vocab_size == 121);
  CHECK(cfg.data.seq_len == 100);
  cfg.model.vocab_size = 100;
  try {
    subq::train::resolve_vocab_size(cfg);
    FAIL("expected an error");
  } catch (const subq::ConfigError& e) {
    CHECK(has(e.what(), "model.vocab_size = 100"));
    CHECK(has(e.what(), "121"));
  }
  cfg.model.vocab_size = 128;  // larger is fine
  CHECK_NOTHROW(subq::train::resolve_vocab_size(cfg));
  cfg.data.synthetic.task = "anbncn";  // invalid task settings surface here too
  cfg.data.synthetic.train_len = 2;
  CHECK_THROWS_AS(subq::train::resolve_vocab_size(cfg), subq::ConfigError);
}

TEST_CASE("the shipped synthetic configs compose with every model file", "[synthetic][configs]") {
  const std::string dir = subq::test::source_dir() + "/configs/synthetic/";
  const std::map<std::string, std::string> arch{{"transformer", "transformer"}, {"xlstm10", "xlstm"},
                                                {"xlstm11", "xlstm"},           {"mamba2", "mamba2"},
                                                {"gdn", "gdn"},                 {"gdn_neg", "gdn"}};
  for (const auto& task : SyntheticConfig::task_names()) {
    INFO(task);
    auto base = subq::load_run_config(dir + task + ".yaml", {});
    CHECK(base.run.name == task);
    CHECK(base.data.task == "synthetic");
    CHECK(base.data.synthetic.task == task);
    CHECK(base.model.arch == "transformer");
    CHECK(base.data.synthetic.train_len == 128);
    CHECK(base.data.synthetic.eval_lens == std::vector<int64_t>{128, 512, 2048});
    CHECK(base.model.max_seq_len >= 2048);
    CHECK_NOTHROW(SyntheticTask{base.data.synthetic});
    for (const auto& [file, a] : arch) {
      INFO(file);
      auto c = subq::load_run_config(std::vector<std::string>{dir + task + ".yaml", dir + "models/" + file + ".yaml"}, {});
      CHECK(c.run.name == task + "-" + file);
      CHECK(c.model.arch == a);
      CHECK(c.model.d_model == 128);
      CHECK(c.model.n_layers == 2);
      CHECK(c.data.synthetic.task == task);  // the model file leaves the task alone
      CHECK(c.model.max_seq_len >= 2048);
    }
    auto x = subq::load_run_config(std::vector<std::string>{dir + task + ".yaml", dir + "models/xlstm11.yaml"}, {});
    CHECK(x.model.xlstm.pattern == "1:1");
    CHECK(x.model.logit_softcap == 30.0);
    auto g = subq::load_run_config(std::vector<std::string>{dir + task + ".yaml", dir + "models/gdn_neg.yaml"}, {});
    CHECK(g.model.gdn.allow_neg_eigval);
    auto g0 = subq::load_run_config(std::vector<std::string>{dir + task + ".yaml", dir + "models/gdn.yaml"}, {});
    CHECK(!g0.model.gdn.allow_neg_eigval);
  }
  auto m = subq::load_run_config(dir + "mod_arith_brackets.yaml", {});
  CHECK(m.data.synthetic.arith_ops == std::vector<std::string>{"+", "-"});
  CHECK(subq::load_run_config(dir + "anbn.yaml", {}).data.synthetic.eval_len_mode == "range");
}

namespace {
subq::RunConfig tiny_synthetic_run(const std::string& name) {
  subq::RunConfig c;
  c.run.out_dir = temp_root().string();
  c.run.name = name;
  c.run.seed = 5;
  c.run.device = "cpu";
  c.run.dtype = "fp32";
  c.run.threads = 1;
  c.model.arch = "transformer";
  c.model.d_model = 32;
  c.model.n_layers = 1;
  c.model.n_heads = 2;
  c.model.d_ff = 64;
  c.model.max_seq_len = 64;
  c.data.task = "synthetic";
  c.data.synthetic.task = "majority";
  c.data.synthetic.train_len = 16;
  c.data.synthetic.eval_lens = {16, 32};
  c.data.synthetic.train_eval_lens = {16, 32};
  c.data.synthetic.eval_examples = 16;
  c.optim.lr = 3e-3;
  c.schedule.warmup_steps = 2;
  c.train.steps = 6;
  c.train.batch_size = 8;
  c.train.log_every = 1;
  c.train.ckpt_every = 0;
  c.eval.every = 3;
  c.eval.batch_size = 8;
  subq::train::resolve_vocab_size(c);
  return c;
}

std::vector<nlohmann::json> read_metrics(const subq::RunDir& rd) {
  std::vector<nlohmann::json> out;
  std::ifstream f(rd.metrics_path());
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

TEST_CASE("training on a synthetic task logs accuracy and resumes exactly", "[synthetic][trainer]") {
  // straight: 6 steps
  auto ca = tiny_synthetic_run("straight");
  CHECK(ca.model.vocab_size == 4);
  auto rda = subq::open_run_dir(ca, {"test_synthetic"});
  auto da = subq::train::open_run_data(ca, torch::kCPU, true, true);
  REQUIRE(da.train);
  REQUIRE(da.evaluator);
  auto ra = subq::train::train(ca, rda, {da.train, da.evaluator});
  REQUIRE(ra.finished);
  REQUIRE(ra.last_eval);
  int evals = 0;
  for (const auto& m : read_metrics(rda)) {
    if (!m.contains("eval_loss")) continue;
    ++evals;
    for (const char* k : {"eval_seq_acc_16", "eval_tok_acc_16", "eval_final_acc_16", "eval_seq_acc_32"}) {
      INFO(k);
      REQUIRE(m.contains(k));
      CHECK(m[k].get<double>() >= 0.0);
      CHECK(m[k].get<double>() <= 1.0);
    }
    CHECK(m["eval_tokens"].get<int64_t>() == 16 * 16 + 16 * 32);  // every majority position is supervised
  }
  CHECK(evals == 2);

  // interrupted at 3, resumed by a fresh source: the same losses, bit for bit
  auto cb = tiny_synthetic_run("resumed");
  auto rdb = subq::open_run_dir(cb, {"test_synthetic"});
  auto db1 = subq::train::open_run_data(cb, torch::kCPU, true, true);
  subq::train::TrainHooks stop3;
  stop3.should_stop = [](int64_t s) { return s == 3; };
  auto rb1 = subq::train::train(cb, rdb, {db1.train, db1.evaluator}, stop3);
  REQUIRE(rb1.step == 3);
  torch::manual_seed(777);
  auto db2 = subq::train::open_run_data(cb, torch::kCPU, true, true);
  auto rb2 = subq::train::train(cb, rdb, {db2.train, db2.evaluator});
  REQUIRE(rb2.start_step == 3);
  std::vector<double> joined = rb1.losses;
  joined.insert(joined.end(), rb2.losses.begin(), rb2.losses.end());
  REQUIRE(joined.size() == ra.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == ra.losses[i]);
  REQUIRE(rb2.last_eval);
  CHECK(rb2.last_eval->to_json()["eval_tok_acc_32"] == ra.last_eval->to_json()["eval_tok_acc_32"]);
}

TEST_CASE("data parallel: ranks take disjoint shares of one stream and resume from rank 0's cursor",
          "[synthetic][dist]") {
  auto cfg = tiny_synthetic_run("dp");
  auto single = subq::train::open_run_data(cfg, torch::kCPU, true, false, 0, 1);
  auto r0 = subq::train::open_run_data(cfg, torch::kCPU, true, false, 0, 2);
  auto r1 = subq::train::open_run_data(cfg, torch::kCPU, true, false, 1, 2);
  const int64_t B = cfg.train.batch_size;
  for (int step = 0; step < 2; ++step) {
    auto b0 = r0.train->next(), b1 = r1.train->next();
    std::vector<SyntheticExample> w0, w1;
    for (int64_t k = 0; k < B; ++k) {
      const uint64_t g = static_cast<uint64_t>(step * 2 * B + 2 * k);
      w0.push_back(single.synthetic->example(g));
      w1.push_back(single.synthetic->example(g + 1));
    }
    CHECK(torch::equal(b0.inputs, subq::data::make_synthetic_batch(w0, torch::kCPU).inputs));
    CHECK(torch::equal(b1.inputs, subq::data::make_synthetic_batch(w1, torch::kCPU).inputs));
  }
  // the trainer saves rank 0's cursor and restores it on every rank: each continues with its own share
  const auto st = r0.train->state();
  auto n0 = subq::train::open_run_data(cfg, torch::kCPU, true, false, 0, 2);
  auto n1 = subq::train::open_run_data(cfg, torch::kCPU, true, false, 1, 2);
  n0.train->restore(st);
  n1.train->restore(st);
  auto c0 = n0.train->next(), c1 = n1.train->next();
  CHECK(torch::equal(c0.inputs, r0.train->next().inputs));
  CHECK(torch::equal(c1.inputs, r1.train->next().inputs));
  CHECK(!torch::equal(c0.inputs, c1.inputs));
}
