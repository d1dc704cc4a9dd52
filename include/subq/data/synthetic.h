// synthetic.h — the synthetic state-tracking suite (data.task = synthetic): task definitions, example
// generators, the training BatchSource and the fixed evaluation sets. docs/synthetic.md documents every
// task's vocabulary, format and supervised positions; this header documents the machinery.
//
// Tasks (token ids are per task; id 0 is always <pad>, never a target):
//   parity              bits then "=", one answer (the parity) at "="             (Deletang et al. 2023)
//   mod_arith           d op d op ... d "=", one answer mod m at "=" (+ - * with precedence)   (ibid.)
//   mod_arith_brackets  a bracketed expression then "=", one answer mod m at "="     (ibid.)
//   s3, s5              permutations; target at every position = the running product (Merrill et al. 2024)
//   majority            a/b symbols; target at every position = running majority (a, b or tie)
//   anbn, anbncn        a^n b^n (c^n); next-symbol targets at every position where the next symbol is
//                       determined by the prefix (from the first b on), "$" = end of string
// A "length" is always T, the number of input tokens of an example. A task accepts the lengths
// min_len() + k * len_step(); a requested length means the longest accepted one at or below it.
//
// Randomness is counter-based: example g of a stream is a pure function of (seed, stream, g) — a
// SplitMix64 generator keyed by the three — so the training source resumes exactly from a counter and
// the evaluation sets are the same in every process, whatever was generated before.
//
// Batches: one example per row, right-padded with <pad> (target -100) to the longest row of the batch;
// doc_start is true at t = 0 only and position_ids are 0..T-1 (no packing: the Transformer baseline
// ignores doc_start, so packing would leak one example into the next).
//
// Example:
//   subq::data::SyntheticConfig sc;               // parity, train_len 128
//   subq::data::SyntheticTask task(sc);
//   subq::data::SyntheticRng rng(0, 0, 0);
//   auto ex = task.generate(9, rng);               // e.g. 0 1 1 0 1 0 0 1 =  -> target "0" at t = 8
//   std::cout << task.render(ex.inputs);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "subq/data/batch.h"
#include "subq/data/data_config.h"

namespace subq::data {

constexpr int64_t kSyntheticPad = 0;        // <pad>: input id of padding
constexpr int64_t kIgnoreTarget = -100;     // target of an unsupervised position (cross-entropy ignores it)

// SplitMix64 keyed by (seed, stream, index): a fresh, independent generator per example.
class SyntheticRng {
 public:
  SyntheticRng(uint64_t seed, uint64_t stream, uint64_t index);
  uint64_t next();
  // Uniform in [0, n) (n >= 1), without modulo bias.
  int64_t uniform(int64_t n);

 private:
  uint64_t s_;
};

struct SyntheticExample {
  std::vector<int64_t> inputs;   // T input token ids
  std::vector<int64_t> targets;  // T target ids, kIgnoreTarget where unsupervised
};

class SyntheticTask {
 public:
  enum class Kind { parity, mod_arith, mod_arith_brackets, s3, s5, majority, anbn, anbncn };

  // Validates the task-specific parts of `cfg` (lengths the task can take, ...): ConfigError naming the
  // data.synthetic key and the fix.
  explicit SyntheticTask(const SyntheticConfig& cfg);

  const std::string& name() const { return name_; }
  Kind kind() const { return kind_; }
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  // Token names by id ("<pad>", "0", "1", "=", ...).
  const std::vector<std::string>& tokens() const { return tokens_; }
  int64_t token_id(const std::string& name) const;  // InternalError when absent
  // True when targets are at many positions (s3, s5, majority, anbn, anbncn); false for one answer.
  bool running() const;

  int64_t min_len() const { return min_len_; }
  int64_t len_step() const { return step_; }
  bool valid_len(int64_t T) const { return T >= min_len_ && (T - min_len_) % step_ == 0; }
  // Longest valid length <= n; 0 when there is none.
  int64_t floor_len(int64_t n) const;
  // Shortest valid length >= n.
  int64_t ceil_len(int64_t n) const;
  // A length drawn uniformly from the valid lengths in [lo, hi] (at least one must exist).
  int64_t draw_len(int64_t lo, int64_t hi, SyntheticRng& rng) const;

  // One example of exactly T input tokens (T valid).
  SyntheticExample generate(int64_t T, SyntheticRng& rng) const;

  // Space-separated token names ("0 1 1 ="); pads included.
  std::string render(const std::vector<int64_t>& ids) const;

  // Permutation tasks: the permutation (one-line notation of 0..n-1) behind token id `id` (1..n!).
  const std::vector<int>& permutation(int64_t id) const;

 private:
  void gen_mod_arith(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const;
  void gen_brackets(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const;
  int64_t gen_bracket_expr(int64_t n, SyntheticRng& rng, std::vector<int64_t>& out) const;
  void gen_permutations(int64_t T, SyntheticRng& rng, SyntheticExample& ex) const;

  std::string name_;
  Kind kind_;
  std::vector<std::string> tokens_;
  int64_t min_len_ = 1, step_ = 1;
  int64_t modulus_ = 5;
  std::vector<int64_t> op_ids_;               // arithmetic operator token ids in use
  std::vector<std::vector<int>> perms_;       // permutation tasks: perms_[id - 1]
  std::vector<std::vector<int64_t>> compose_; // compose_[a][b] = id of (apply a, then b)
};

// The training stream: example g (global, over all data-parallel ranks) is generate(len_g, rng(seed, 0, g))
// with len_g uniform over the valid lengths in [train_min_len, train_len]. Rank r of w takes global
// examples consumed + r + k * w (k < batch_size) per next(); every next() advances the cursor by
// batch_size * w. state() = {kind, version, seed, fingerprint, world, consumed}; restore() continues
// exactly (same batches, bitwise), refuses a cursor of another task config (InputError) and, like the
// token loader, accepts another world size (continuing at the same global example, rounded down).
struct SyntheticSourceOptions {
  SyntheticConfig cfg;
  int64_t batch_size = 8;
  uint64_t seed = 0;
  int64_t rank = 0, world = 1;
  torch::Device device = torch::kCPU;
};

class SyntheticSource final : public BatchSource {
 public:
  explicit SyntheticSource(SyntheticSourceOptions opts);
  Batch next() override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;

  const SyntheticTask& task() const { return task_; }
  uint64_t consumed() const { return consumed_; }
  // The global training example g (what next() batches), for tests.
  SyntheticExample example(uint64_t g) const;

 private:
  SyntheticSourceOptions opts_;
  SyntheticTask task_;
  std::string fingerprint_;
  int64_t lo_ = 1, hi_ = 1;
  uint64_t consumed_ = 0;
};

// One evaluation length: sequences of length in [lo, hi] (lo == hi in exact mode), scored as "len".
struct SyntheticEvalLength {
  int64_t len = 0;  // the requested length (the table's row)
  int64_t lo = 0, hi = 0;
};

// The evaluation lengths for `lens` under cfg.eval_len_mode (exact: [floor(L), floor(L)]; range:
// (previous L, L], the first from train_min_len). ConfigError (naming `key`) when a length or range holds
// no valid length for the task.
std::vector<SyntheticEvalLength> synthetic_eval_lengths(const SyntheticTask& task, const SyntheticConfig& cfg,
                                                        const std::vector<int64_t>& lens, const std::string& key);

// Example i of the evaluation set of `el`: generated from (cfg.eval_seed, a stream keyed by lo and hi, i),
// so it does not depend on run.seed, on the other lengths or on the training stream.
SyntheticExample synthetic_eval_example(const SyntheticTask& task, const SyntheticConfig& cfg,
                                        const SyntheticEvalLength& el, int64_t i);

// Rows padded to the longest example (inputs <pad>, targets -100), doc_start at t = 0, position_ids
// 0..T-1; on `device`.
Batch make_synthetic_batch(const std::vector<SyntheticExample>& examples, const torch::Device& device);

}  // namespace subq::data
