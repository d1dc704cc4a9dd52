// lm_eval.h — held-out language-model metrics: loss (mean nats per target token), perplexity and bits
// per byte.
//
// Bits per byte (bpb) = sum of nats / (ln 2 * UTF-8 bytes of the targets), over the target tokens that
// decode to text: special tokens (document separators, 0 bytes) are left out of both sums, as nanochat
// does, so bpb measures how well the text itself is compressed and compares across tokenizers. Loss and
// perplexity average over every target (special tokens included); targets < 0 (padding, -100) are
// ignored everywhere.
//
// Example:
//   auto bytes = subq::eval::token_bytes_table(vocab, [&](int64_t id) { return tok.token_bytes(id); });
//   subq::eval::LmEvalOptions o;
//   o.token_bytes = bytes;
//   auto r = subq::eval::evaluate_lm(*model, [&] { return val_windows.next(); }, o);  // whole set
//   std::cout << r.to_json().dump();  // {"eval_loss": 2.31, "eval_ppl": 10.1, "eval_bpb": 0.93, ...}
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "subq/data/batch.h"
#include "subq/models/model.h"

namespace subq::eval {

struct LmEvalResult {
  double loss = 0;                 // mean nats per target token
  double ppl = 0;                  // exp(loss)
  std::optional<double> bpb;       // when a token-bytes table was given and bytes > 0
  int64_t tokens = 0;              // target tokens scored
  int64_t bytes = 0;               // UTF-8 bytes of the byte-bearing targets
  int64_t batches = 0;
  double nats = 0;                 // sum of nats over all targets
  double text_nats = 0;            // sum of nats over byte-bearing targets (bpb numerator)
  // Task-specific metrics of other evaluators (e.g. the synthetic tasks' accuracies per length, see
  // synthetic_eval.h): a JSON object whose keys to_json() adds, and a short line of them for the log.
  nlohmann::json extra;
  std::string summary;
  // {"eval_loss", "eval_ppl", "eval_bpb" (null without bytes), "eval_tokens", "eval_bytes", "eval_batches"},
  // plus the keys of `extra`
  nlohmann::json to_json() const;
};

// Running sums over scored batches (exposed for tests and for distributed reduction).
struct LmEvalSums {
  double nats = 0, text_nats = 0;
  int64_t tokens = 0, bytes = 0, batches = 0;
  // logits [B, T, V] (any float dtype; scored in fp32), targets [B, T] int64; token_bytes [V'] int64 on
  // any device or undefined. Targets outside token_bytes count 0 bytes.
  void add(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& token_bytes);
  LmEvalResult result(bool have_bytes) const;
};

struct LmEvalOptions {
  int64_t batches = 0;          // at most this many batches; 0 = until the stream ends
  torch::Tensor token_bytes;    // [V] int64 bytes per token id; undefined = no bpb
  torch::ScalarType compute = torch::kFloat32;  // bf16 = autocast, as in training
};

// A finite stream of held-out batches: nullopt ends it (e.g. a pass over EvalWindows).
using BatchStream = std::function<std::optional<data::Batch>()>;

// Scores the batches of `stream` (up to opts.batches) with the model in no-grad mode on the device of its
// parameters. The model's train/eval mode is restored afterwards.
LmEvalResult evaluate_lm(models::LanguageModel& model, const BatchStream& stream, const LmEvalOptions& opts);
// Same over an endless BatchSource from wherever it stands: exactly opts.batches batches (InputError
// when 0, since such a source has no end).
LmEvalResult evaluate_lm(models::LanguageModel& model, data::BatchSource& source, const LmEvalOptions& opts);

// What the trainer calls at each evaluation: scores the model in the given compute dtype.
using Evaluator = std::function<LmEvalResult(models::LanguageModel& model, torch::ScalarType compute)>;
// An Evaluator over an endless source: every call first restores the source to the state it had when the
// evaluator was made, so every evaluation scores the same `batches` batches. The source must outlive it.
Evaluator source_evaluator(data::BatchSource& source, int64_t batches, torch::Tensor token_bytes = {});

// [vocab_size] int64 CPU table of bytes per token id from a callback (e.g. Tokenizer::token_bytes).
torch::Tensor token_bytes_table(int64_t vocab_size, const std::function<int64_t(int64_t)>& bytes_of);

}  // namespace subq::eval
