// synthetic.cpp — the synthetic tasks: vocabularies, length rules and generators (see synthetic.h and
// docs/synthetic.md for the formats).
//
// Decisions:
//  * Generators are plain C++ over std::vector (no tensors): an example of 2048 tokens costs
//    microseconds, far below a model step, so the training source needs no background thread.
//  * mod_arith follows Deletang et al.'s "modular arithmetic (simple)": operands 0..m-1 alternate with
//    operators, * binds tighter than + and -, evaluated left to right, result taken mod m (non-negative).
//  * mod_arith_brackets follows the public implementation's grammar: length 1 "d", 2 "-d", 3 "(d)",
//    4 "(-d)", longer "(" L op R ")" with the left length uniform in [1, n-4]; its value is computed
//    while the string is generated.
//  * Permutation tokens are the n! permutations in lexicographic order of their one-line notation
//    (identity first); the running product p_t = apply p_{t-1}, then x_t (Merrill et al.'s word problem
//    with the target at every position).
#include "subq/data/synthetic.h"

#include <algorithm>
#include <numeric>

#include "subq/core/error.h"

namespace subq::data {

namespace {

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

SyntheticTask::Kind kind_of(const std::string& name) {
  using K = SyntheticTask::Kind;
  if (name == "parity") return K::parity;
  if (name == "mod_arith") return K::mod_arith;
  if (name == "mod_arith_brackets") return K::mod_arith_brackets;
  if (name == "s3") return K::s3;
  if (name == "s5") return K::s5;
  if (name == "majority") return K::majority;
  if (name == "anbn") return K::anbn;
  if (name == "anbncn") return K::anbncn;
  std::string all;
  for (const auto& t : SyntheticConfig::task_names()) all += (all.empty() ? "" : ", ") + t;
  throw ConfigError(str("data.synthetic.task = '", name, "' is not a synthetic task; use one of: ", all));
}

int64_t pos_mod(int64_t v, int64_t m) { return ((v % m) + m) % m; }

}  // namespace

// ------------------------------------------------------------------------------------------------ rng

SyntheticRng::SyntheticRng(uint64_t seed, uint64_t stream, uint64_t index)
    : s_(mix64(mix64(mix64(seed) ^ stream) ^ index)) {}

uint64_t SyntheticRng::next() {
  s_ += 0x9e3779b97f4a7c15ULL;
  uint64_t z = s_;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int64_t SyntheticRng::uniform(int64_t n) {
  SUBQ_CHECK(n >= 1, "uniform(", n, ")");
  // Lemire's multiply-and-reject: unbiased for every n.
  const uint64_t un = static_cast<uint64_t>(n);
  __uint128_t m = static_cast<__uint128_t>(next()) * un;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < un) {
    const uint64_t threshold = (0 - un) % un;
    while (low < threshold) {
      m = static_cast<__uint128_t>(next()) * un;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<int64_t>(m >> 64);
}

// ----------------------------------------------------------------------------------------------- task

SyntheticTask::SyntheticTask(const SyntheticConfig& cfg) : name_(cfg.task), kind_(kind_of(cfg.task)) {
  using K = Kind;
  tokens_ = {"<pad>"};
  auto digits = [&] {
    for (int64_t d = 0; d < cfg.modulus; ++d) tokens_.push_back(std::to_string(d));
  };
  switch (kind_) {
    case K::parity:
      tokens_.insert(tokens_.end(), {"0", "1", "="});
      min_len_ = 2;  // one bit and "="
      break;
    case K::mod_arith:
    case K::mod_arith_brackets:
      modulus_ = cfg.modulus;
      digits();
      tokens_.insert(tokens_.end(), {"+", "-", "*", "="});
      if (kind_ == K::mod_arith_brackets) tokens_.insert(tokens_.end(), {"(", ")"});
      for (const auto& op : cfg.arith_ops) op_ids_.push_back(token_id(op));
      min_len_ = 2;                                 // "d ="
      step_ = kind_ == K::mod_arith ? 2 : 1;        // without brackets the expression has odd length
      break;
    case K::s3:
    case K::s5: {
      const int n = kind_ == K::s3 ? 3 : 5;
      std::vector<int> p(static_cast<size_t>(n));
      std::iota(p.begin(), p.end(), 0);
      do {
        perms_.push_back(p);
        std::string name;
        for (int v : p) name += std::to_string(v + 1);
        tokens_.push_back(name);
      } while (std::next_permutation(p.begin(), p.end()));
      const size_t count = perms_.size();
      compose_.assign(count + 1, std::vector<int64_t>(count + 1, 0));
      for (size_t a = 0; a < count; ++a) {
        for (size_t b = 0; b < count; ++b) {
          std::vector<int> c(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) c[static_cast<size_t>(i)] = perms_[b][static_cast<size_t>(perms_[a][static_cast<size_t>(i)])];
          // lexicographic rank of c
          auto it = std::lower_bound(perms_.begin(), perms_.end(), c);
          compose_[a + 1][b + 1] = static_cast<int64_t>(it - perms_.begin()) + 1;
        }
      }
      min_len_ = 1;
      break;
    }
    case K::majority:
      tokens_.insert(tokens_.end(), {"a", "b", "tie"});
      min_len_ = 1;
      break;
    case K::anbn:
      tokens_.insert(tokens_.end(), {"a", "b", "$"});
      min_len_ = 2;
      step_ = 2;
      break;
    case K::anbncn:
      tokens_.insert(tokens_.end(), {"a", "b", "c", "$"});
      min_len_ = 3;
      step_ = 3;
      break;
  }

  // The length rule is shared with config validation (data_config.h); a config built in code rather than
  // loaded from YAML is checked here.
  const auto rule = SyntheticLengthRule::of(name_);
  SUBQ_CHECK(rule.min_len == min_len_ && rule.step == step_, "length rule of ", name_);
  const std::string problem = cfg.length_problem();
  if (!problem.empty()) throw ConfigError(problem);
}

int64_t SyntheticTask::token_id(const std::string& name) const {
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (tokens_[i] == name) return static_cast<int64_t>(i);
  throw InternalError(str("task ", name_, " has no token '", name, "'"));
}

bool SyntheticTask::running() const {
  switch (kind_) {
    case Kind::parity:
    case Kind::mod_arith:
    case Kind::mod_arith_brackets: return false;
    default: return true;
  }
}

int64_t SyntheticTask::floor_len(int64_t n) const { return SyntheticLengthRule{min_len_, step_}.floor(n); }

int64_t SyntheticTask::ceil_len(int64_t n) const { return SyntheticLengthRule{min_len_, step_}.ceil(n); }

int64_t SyntheticTask::draw_len(int64_t lo, int64_t hi, SyntheticRng& rng) const {
  const int64_t a = ceil_len(lo), b = floor_len(hi);
  SUBQ_CHECK(b >= a && a > 0, "no valid length of ", name_, " in [", lo, ", ", hi, "]");
  return a + rng.uniform((b - a) / step_ + 1) * step_;
}

const std::vector<int>& SyntheticTask::permutation(int64_t id) const {
  SUBQ_CHECK(!perms_.empty() && id >= 1 && id <= static_cast<int64_t>(perms_.size()), "task ", name_,
             " has no permutation token ", id);
  return perms_[static_cast<size_t>(id - 1)];
}

std::string SyntheticTask::render(const std::vector<int64_t>& ids) const {
  std::string s;
  for (int64_t id : ids) {
    if (!s.empty()) s += ' ';
    s += id >= 0 && id < vocab_size() ? tokens_[static_cast<size_t>(id)] : str("?", id);
  }
  return s;
}

SyntheticExample SyntheticTask::generate(int64_t T, SyntheticRng& rng) const {
  SUBQ_CHECK(valid_len(T), "task ", name_, " has no sequences of length ", T);
  SyntheticExample ex;
  ex.inputs.reserve(static_cast<size_t>(T));
  ex.targets.assign(static_cast<size_t>(T), kIgnoreTarget);
  switch (kind_) {
    case Kind::parity: {
      const int64_t zero = 1, one = 2, eq = 3;
      int64_t ones = 0;
      for (int64_t t = 0; t + 1 < T; ++t) {
        const int64_t bit = rng.uniform(2);
        ones += bit;
        ex.inputs.push_back(bit ? one : zero);
      }
      ex.inputs.push_back(eq);
      ex.targets.back() = ones % 2 ? one : zero;
      break;
    }
    case Kind::mod_arith: gen_mod_arith(T, rng, ex); break;
    case Kind::mod_arith_brackets: gen_brackets(T, rng, ex); break;
    case Kind::s3:
    case Kind::s5: gen_permutations(T, rng, ex); break;
    case Kind::majority: {
      const int64_t a = 1, b = 2, tie = 3;
      int64_t diff = 0;  // #a - #b
      for (int64_t t = 0; t < T; ++t) {
        const bool is_a = rng.uniform(2) == 0;
        diff += is_a ? 1 : -1;
        ex.inputs.push_back(is_a ? a : b);
        ex.targets[static_cast<size_t>(t)] = diff > 0 ? a : diff < 0 ? b : tie;
      }
      break;
    }
    case Kind::anbn:
    case Kind::anbncn: {
      const int64_t groups = kind_ == Kind::anbn ? 2 : 3;
      const int64_t end = groups + 1;  // "$"
      const int64_t n = T / groups;
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t i = 0; i < n; ++i) ex.inputs.push_back(g + 1);
      // From the first b on the next symbol is determined: the same symbol until the group is complete,
      // then the next group's symbol, then "$".
      for (int64_t t = n; t < T; ++t) ex.targets[static_cast<size_t>(t)] = t + 1 < T ? ex.inputs[static_cast<size_t>(t + 1)] : end;
      break;
    }
  }
  SUBQ_CHECK(static_cast<int64_t>(ex.inputs.size()) == T, "generator of ", name_, " made ", ex.inputs.size(),
             " tokens instead of ", T);
  return ex;
}

void SyntheticTask::gen_mod_arith(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const {
  const int64_t m = modulus_;
  const int64_t plus = token_id("+"), minus = token_id("-"), times = token_id("*"), eq = token_id("=");
  const int64_t operands = T / 2;  // T - 1 = 2 * operands - 1 expression tokens
  // sum of finished terms, and the current term (a product) with its sign
  int64_t total = 0, term = rng.uniform(m), sign = 1;
  ex.inputs.push_back(term + 1);
  for (int64_t i = 1; i < operands; ++i) {
    const int64_t op = op_ids_[static_cast<size_t>(rng.uniform(static_cast<int64_t>(op_ids_.size())))];
    const int64_t d = rng.uniform(m);
    ex.inputs.push_back(op);
    ex.inputs.push_back(d + 1);
    if (op == times) {
      term = term * d % m;
    } else {
      total = pos_mod(total + sign * term, m);
      sign = op == plus ? 1 : -1;
      SUBQ_CHECK(op == plus || op == minus);
      term = d;
    }
  }
  total = pos_mod(total + sign * term, m);
  ex.inputs.push_back(eq);
  ex.targets.back() = total + 1;
}

// Appends an expression of exactly n tokens to `out` and returns its value mod m.
int64_t SyntheticTask::gen_bracket_expr(int64_t n, SyntheticRng& rng, std::vector<int64_t>& out) const {
  const int64_t m = modulus_;
  const int64_t minus = token_id("-"), open = token_id("("), close = token_id(")");
  auto digit = [&] {
    const int64_t d = rng.uniform(m);
    out.push_back(d + 1);
    return d;
  };
  switch (n) {
    case 1: return digit();
    case 2: out.push_back(minus); return pos_mod(-digit(), m);
    case 3: {
      out.push_back(open);
      const int64_t d = digit();
      out.push_back(close);
      return d;
    }
    case 4: {
      out.push_back(open);
      out.push_back(minus);
      const int64_t d = pos_mod(-digit(), m);
      out.push_back(close);
      return d;
    }
    default: break;
  }
  const int64_t left = 1 + rng.uniform(n - 4);  // [1, n - 4]
  const int64_t right = n - 3 - left;
  out.push_back(open);
  const int64_t a = gen_bracket_expr(left, rng, out);
  const int64_t op = op_ids_[static_cast<size_t>(rng.uniform(static_cast<int64_t>(op_ids_.size())))];
  out.push_back(op);
  const int64_t b = gen_bracket_expr(right, rng, out);
  out.push_back(close);
  const std::string& o = tokens_[static_cast<size_t>(op)];
  return o == "+" ? pos_mod(a + b, m) : o == "-" ? pos_mod(a - b, m) : a * b % m;
}

void SyntheticTask::gen_brackets(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const {
  const int64_t v = gen_bracket_expr(T - 1, rng, ex.inputs);
  ex.inputs.push_back(token_id("="));
  ex.targets.back() = v + 1;
}

void SyntheticTask::gen_permutations(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const {
  const int64_t count = static_cast<int64_t>(perms_.size());
  int64_t p = 1;  // identity
  for (int64_t t = 0; t < T; ++t) {
    const int64_t x = 1 + rng.uniform(count);
    p = compose_[static_cast<size_t>(p)][static_cast<size_t>(x)];
    ex.inputs.push_back(x);
    ex.targets[static_cast<size_t>(t)] = p;
  }
}

// ------------------------------------------------------------------------------------------ eval sets

std::vector<SyntheticEvalLength> synthetic_eval_lengths(const SyntheticTask& task, const SyntheticConfig& cfg,
                                                        const std::vector<int64_t>& lens, const std::string& key) {
  std::vector<SyntheticEvalLength> out;
  const bool range = cfg.eval_len_mode == "range";
  int64_t prev = task.ceil_len(cfg.train_min_len) - 1;
  for (size_t i = 0; i < lens.size(); ++i) {
    const int64_t L = lens[i];
    SyntheticEvalLength el;
    el.len = L;
    el.hi = task.floor_len(L);
    if (el.hi == 0)
      throw ConfigError(str(key, " contains ", L, ", shorter than the shortest sequence of task ", task.name(),
                            " (", task.min_len(), " tokens); remove it or raise it"));
    if (range && i > 0 && L <= lens[i - 1])
      throw ConfigError(str(key, " must be strictly increasing with data.synthetic.eval_len_mode = range"));
    el.lo = range ? task.ceil_len(prev + 1) : el.hi;
    if (el.lo > el.hi)
      throw ConfigError(str(key, ": the range (", prev, ", ", L, "] holds no length of task ", task.name(),
                            " (lengths ", task.min_len(), " + k * ", task.len_step(),
                            "); space the lengths further apart or use data.synthetic.eval_len_mode = exact"));
    prev = L;
    out.push_back(el);
  }
  return out;
}

SyntheticExample synthetic_eval_example(const SyntheticTask& task, const SyntheticConfig& cfg,
                                        const SyntheticEvalLength& el, int64_t i) {
  // Stream 0 is training; evaluation streams have the top bit set and are keyed by their length range.
  const uint64_t stream = (1ULL << 63) | (static_cast<uint64_t>(el.lo) << 32) | static_cast<uint64_t>(el.hi);
  SyntheticRng rng(static_cast<uint64_t>(cfg.eval_seed), stream, static_cast<uint64_t>(i));
  const int64_t T = el.lo == el.hi ? el.hi : task.draw_len(el.lo, el.hi, rng);
  return task.generate(T, rng);
}

}  // namespace subq::data
