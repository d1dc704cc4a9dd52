// synthetic_eval.h — accuracy of a model on the synthetic state-tracking tasks, per sequence length.
//
// For each evaluation length (data.synthetic.eval_lens, see data/synthetic.h for how a length becomes a
// set of sequences) and over its data.synthetic.eval_examples sequences:
//   seq_acc    fraction of sequences whose every supervised position is predicted correctly;
//   tok_acc    fraction of supervised positions predicted correctly (over all sequences);
//   final_acc  fraction of sequences whose last supervised position is predicted correctly (for the
//              one-answer tasks — parity, mod_arith, mod_arith_brackets — it equals seq_acc and tok_acc);
//   loss       mean cross-entropy (nats) over the supervised positions.
// A prediction is the argmax of the logits over the whole vocabulary (no restriction to the task's
// answer tokens), so a model is only right when its top token is the target.
//
// Example:
//   auto r = subq::eval::evaluate_synthetic(*model, cfg.data.synthetic, cfg.data.synthetic.eval_lens, {});
//   std::cout << r.table();                 // one row per length
//   subq::fsx::write_file_atomic(path, r.to_json().dump(2));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "subq/data/data_config.h"
#include "subq/eval/lm_eval.h"
#include "subq/models/model.h"

namespace subq::eval {

struct SyntheticLengthResult {
  int64_t len = 0;          // requested length (table row)
  int64_t lo = 0, hi = 0;   // lengths of the sequences scored (lo == hi in exact mode)
  int64_t examples = 0;     // sequences scored
  int64_t targets = 0;      // supervised positions scored
  int64_t seq_correct = 0, tok_correct = 0, final_correct = 0;
  double nats = 0;          // summed cross-entropy over supervised positions

  double seq_acc() const;
  double tok_acc() const;
  double final_acc() const;
  double loss() const;
  // {"len", "min_len", "max_len", "examples", "targets", "seq_acc", "tok_acc", "final_acc", "loss"}
  nlohmann::json to_json() const;

  // Adds a batch: logits [B, T, V] (any float dtype), targets [B, T] int64 with -100 where unsupervised.
  // Every row must have at least one supervised position (InternalError otherwise).
  void add(const torch::Tensor& logits, const torch::Tensor& targets);
};

struct SyntheticEvalResult {
  std::string task;
  bool running = false;  // targets at many positions (final_acc is then informative)
  std::string mode;      // data.synthetic.eval_len_mode
  std::vector<SyntheticLengthResult> lengths;

  // {"task", "running", "eval_len_mode", "lengths": [SyntheticLengthResult::to_json(), ...]}
  nlohmann::json to_json() const;
  // Fixed-width text table, one row per length.
  std::string table() const;
  // For the trainer's metrics: loss / ppl over every supervised position of every length, and in
  // `extra` eval_seq_acc_<len>, eval_tok_acc_<len>, eval_final_acc_<len> per length; summary
  // "seq_acc@128 0.998, tok_acc@128 0.999, ...".
  LmEvalResult as_lm_result() const;
};

struct SyntheticEvalOptions {
  int64_t batch_size = 8;                        // sequences per forward pass
  torch::ScalarType compute = torch::kFloat32;   // bf16 = autocast, as in training
};

// Scores `model` (in no-grad, eval mode, on the device of its parameters; its mode is restored) on the
// evaluation sets of `lens` (validated against the task: ConfigError). Sequences come from
// data::synthetic_eval_example, so every call and every process scores the same sequences.
SyntheticEvalResult evaluate_synthetic(models::LanguageModel& model, const data::SyntheticConfig& cfg,
                                       const std::vector<int64_t>& lens, const SyntheticEvalOptions& opts);

// The trainer's periodic evaluation for a synthetic run: evaluate_synthetic at cfg.periodic_eval_lens()
// in batches of `batch_size`, as an LmEvalResult (as_lm_result).
Evaluator synthetic_evaluator(const data::SyntheticConfig& cfg, int64_t batch_size);

}  // namespace subq::eval
