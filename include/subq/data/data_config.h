// data_config.h — the `data:` section: what a run trains and evaluates on. Every key is documented here.
//
// data.task picks the workload: `code` (causal LM on token shards: data.train / val / tokenizer /
// seq_len / prefetch / shuffle) or `synthetic` (the state-tracking suite of docs/synthetic.md, generated
// on the fly: only the data.synthetic sub-section is read; data.seq_len is set to
// data.synthetic.train_len when the run resolves).
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "subq/core/schema.h"

namespace subq::data {

// The lengths a synthetic task accepts: min_len + k * step (k >= 0). Here rather than in synthetic.h so
// that config validation (`subq config --check`, which links no task code) applies the same rule.
struct SyntheticLengthRule {
  int64_t min_len = 1, step = 1;

  static SyntheticLengthRule of(const std::string& task) {
    if (task == "parity" || task == "mod_arith_brackets") return {2, 1};  // one token and "="
    if (task == "mod_arith") return {2, 2};                                // odd expression + "="
    if (task == "anbn") return {2, 2};
    if (task == "anbncn") return {3, 3};
    return {1, 1};  // s3, s5, majority
  }
  bool valid(int64_t n) const { return n >= min_len && (n - min_len) % step == 0; }
  int64_t floor(int64_t n) const { return n < min_len ? 0 : min_len + (n - min_len) / step * step; }  // 0: none
  int64_t ceil(int64_t n) const { return n <= min_len ? min_len : min_len + (n - min_len + step - 1) / step * step; }
  std::string describe() const {
    return step == 1 ? ">= " + std::to_string(min_len)
                     : std::to_string(min_len) + " + k * " + std::to_string(step) + " (k >= 0)";
  }
};

// data.synthetic — one task of the synthetic state-tracking suite (docs/synthetic.md has each task's
// vocabulary, format and supervised positions). "Length" is always the number of input tokens the model
// reads (T). Lengths a task cannot take (odd for mod_arith, not a multiple of 3 for anbncn, ...) are
// never drawn: a requested length means the longest valid one at or below it.
struct SyntheticConfig {
  std::string task = "parity";
  int64_t train_len = 128;
  int64_t train_min_len = 1;
  std::vector<int64_t> eval_lens = {128, 512, 2048};
  int64_t eval_examples = 512;
  std::string eval_len_mode = "exact";
  std::vector<int64_t> train_eval_lens = {};
  int64_t eval_seed = 1234;
  int64_t modulus = 5;
  std::vector<std::string> arith_ops = {"+", "-", "*"};

  static std::vector<std::string> task_names() {
    return {"parity", "mod_arith", "mod_arith_brackets", "s3", "s5", "majority", "anbn", "anbncn"};
  }

  // The lengths the trainer's periodic evaluation scores: train_eval_lens, or [train_len] when empty.
  std::vector<int64_t> periodic_eval_lens() const {
    return train_eval_lens.empty() ? std::vector<int64_t>{train_len} : train_eval_lens;
  }
  // "" when every length setting fits the task's length rule, else the problem and its fix, naming the key.
  std::string length_problem() const {
    const auto r = SyntheticLengthRule::of(task);
    if (r.floor(train_len) == 0)
      return "data.synthetic.train_len = " + std::to_string(train_len) + ": task " + task + " has sequences of length " +
             r.describe() + "; raise train_len";
    if (r.ceil(train_min_len) > r.floor(train_len))
      return "data.synthetic.train_min_len = " + std::to_string(train_min_len) + " and train_len = " +
             std::to_string(train_len) + " leave no valid length for task " + task + " (lengths " + r.describe() +
             "); lower train_min_len or raise train_len";
    for (const auto& [key, lens] : {std::pair<std::string, std::vector<int64_t>>{"eval_lens", eval_lens},
                                    {"train_eval_lens", train_eval_lens}}) {
      int64_t prev = r.ceil(train_min_len) - 1;
      for (size_t i = 0; i < lens.size(); ++i) {
        const int64_t L = lens[i];
        if (r.floor(L) == 0)
          return "data.synthetic." + key + " contains " + std::to_string(L) + ", shorter than the shortest sequence of task " +
                 task + " (" + std::to_string(r.min_len) + " tokens); remove it or raise it";
        if (eval_len_mode == "range") {
          if (i > 0 && L <= lens[i - 1])
            return "data.synthetic." + key + " must be strictly increasing with eval_len_mode = range";
          if (r.ceil(prev + 1) > r.floor(L))
            return "data.synthetic." + key + ": the range (" + std::to_string(prev) + ", " + std::to_string(L) +
                   "] holds no length of task " + task + " (lengths " + r.describe() +
                   "); space the lengths further apart or use eval_len_mode = exact";
        }
        prev = L;
      }
    }
    return "";
  }

  // The longest sequence a run with this config feeds the model (training and every evaluation).
  int64_t longest_len() const {
    int64_t m = train_len;
    for (int64_t l : eval_lens) m = std::max(m, l);
    for (int64_t l : train_eval_lens) m = std::max(m, l);
    return m;
  }

  static void describe(config::Section<SyntheticConfig>& s) {
    s.field("task", &SyntheticConfig::task,
            "synthetic task: parity, mod_arith (mod-m arithmetic with + - * and precedence, no brackets), "
            "mod_arith_brackets, s3 / s5 (permutation composition, running product), majority (running "
            "majority of a/b: counting), anbn, anbncn (next-symbol prediction); formats in docs/synthetic.md")
        .choices(task_names());
    s.field("train_len", &SyntheticConfig::train_len,
            "longest training sequence (input tokens); each example's length is drawn uniformly from the "
            "task's valid lengths in [train_min_len, train_len]").min(1);
    s.field("train_min_len", &SyntheticConfig::train_min_len,
            "shortest training sequence; raised to the task's shortest valid length (e.g. 2 for parity: one "
            "bit and '=')").min(1);
    s.field("eval_lens", &SyntheticConfig::eval_lens,
            "lengths at which `subq eval` measures accuracy (model.max_seq_len must cover the longest)").min(1);
    s.field("eval_examples", &SyntheticConfig::eval_examples, "sequences scored per eval length").min(1);
    s.field("eval_len_mode", &SyntheticConfig::eval_len_mode,
            "exact: every sequence of eval length L has length L (the longest valid length <= L); range: "
            "lengths drawn uniformly from (previous eval length, L] (the first from [train_min_len, L]), as "
            "length-generalisation bins")
        .choices({"exact", "range"});
    s.field("train_eval_lens", &SyntheticConfig::train_eval_lens,
            "lengths scored by the evaluation every eval.every steps during training; [] = [train_len]").min(1);
    s.field("eval_seed", &SyntheticConfig::eval_seed,
            "seed of the evaluation sequences (not run.seed, so runs with different seeds are scored on the "
            "same sequences)").min(0);
    s.field("modulus", &SyntheticConfig::modulus, "modulus m of mod_arith and mod_arith_brackets (digits 0..m-1)")
        .range(2, 1000);
    s.field("arith_ops", &SyntheticConfig::arith_ops,
            "binary operators of mod_arith and mod_arith_brackets (a non-empty subset of + - *; the public "
            "brackets task uses [+, -])")
        .choices({"+", "-", "*"});
    s.check("train_min_len", [](const SyntheticConfig& c) {
      return c.train_min_len <= c.train_len
                 ? std::string()
                 : "train_min_len (" + std::to_string(c.train_min_len) + ") must be <= train_len (" +
                       std::to_string(c.train_len) + ")";
    });
    s.check("eval_lens", [](const SyntheticConfig& c) {
      if (c.eval_lens.empty()) return std::string("must list at least one length, e.g. [128, 512, 2048]");
      if (!std::is_sorted(c.eval_lens.begin(), c.eval_lens.end()) ||
          std::adjacent_find(c.eval_lens.begin(), c.eval_lens.end()) != c.eval_lens.end())
        return std::string("must be strictly increasing, e.g. [128, 512, 2048]");
      return std::string();
    });
    s.check("task", [](const SyntheticConfig& c) { return c.length_problem(); });
    s.check("arith_ops", [](const SyntheticConfig& c) {
      std::set<std::string> u(c.arith_ops.begin(), c.arith_ops.end());
      if (c.arith_ops.empty()) return std::string("must name at least one operator of + - *");
      if (u.size() != c.arith_ops.size()) return std::string("lists an operator twice");
      return std::string();
    });
  }
};

struct DataConfig {
  std::string task = "code";
  std::string train = "data/cache/code/train";
  std::string val = "data/cache/code/val";
  std::string tokenizer = "data/cache/code/tokenizer.json";
  int64_t seq_len = 256;
  int64_t prefetch = 4;
  bool shuffle = true;
  SyntheticConfig synthetic;

  static void describe(config::Section<DataConfig>& s) {
    s.field("task", &DataConfig::task,
            "workload: code (causal LM on token shards) or synthetic (the state-tracking suite, data.synthetic; "
            "data.train / val / tokenizer are then not used)")
        .choices({"code", "synthetic"});
    s.field("train", &DataConfig::train, "training token shards: a directory of .bin shards (from `subq prepare code`)")
        .non_empty();
    s.field("val", &DataConfig::val, "held-out token shards for eval; \"\" = no eval");
    s.field("tokenizer", &DataConfig::tokenizer, "tokenizer.json (HF format) used for the shards, eval bytes and generation");
    s.field("seq_len", &DataConfig::seq_len,
            "tokens per training sequence (windows of seq_len+1); task synthetic sets it to data.synthetic.train_len")
        .min(1);
    s.field("prefetch", &DataConfig::prefetch, "batches prepared ahead by the background loader").min(0);
    s.field("shuffle", &DataConfig::shuffle,
            "train windows in a seeded random order (permuted per epoch, window boundaries shifted per epoch); "
            "false = in file order (debugging)");
    s.field("synthetic", &DataConfig::synthetic, "synthetic state-tracking task (data.task = synthetic)");
  }
};

}  // namespace subq::data
