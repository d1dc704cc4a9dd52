// lm_data.h — the data side of a causal-LM run, from its config: the tokenizer (vocabulary size, bytes per
// token for bits per byte), the training loader over data.train and the held-out pass over data.val.
// `subq train` and `subq eval` both build their inputs here.
//
// model.vocab_size = 0 means "from the tokenizer": resolve_vocab_size() sets it to the tokenizer's
// vocabulary rounded up to a multiple of 64 (so the embedding and output matmuls have tensor-core
// friendly shapes; the extra rows are never targets). An explicit vocab_size must cover every id of the
// tokenizer and of the shards (InputError otherwise).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include <torch/types.h>

#include "subq/core/run_config.h"
#include "subq/data/loader.h"
#include "subq/data/tokenizer.h"
#include "subq/eval/lm_eval.h"

namespace subq::train {

// Vocabulary rounding for model.vocab_size = 0.
constexpr int64_t kVocabMultiple = 64;

// The tokenizer named by data.tokenizer, or nullopt when data.tokenizer is "" (InputError when it is
// named but cannot be loaded).
std::optional<data::Tokenizer> load_run_tokenizer(const RunConfig& cfg);

// Sets cfg.model.vocab_size from the tokenizer when it is 0 (ConfigError when there is no tokenizer to
// take it from); checks an explicit one against the tokenizer. Returns the tokenizer (if any).
// With data.task = synthetic no tokenizer is read: vocab_size 0 becomes the task's vocabulary size
// (exactly, no rounding: the vocabularies have 4 to 121 ids), an explicit one must cover it, the task
// settings are validated (ConfigError) and data.seq_len is set to data.synthetic.train_len; returns nullopt.
std::optional<data::Tokenizer> resolve_vocab_size(RunConfig& cfg);

struct LmData {
  std::optional<data::Tokenizer> tokenizer;
  std::unique_ptr<data::TokenWindowLoader> train;  // when asked for
  std::unique_ptr<data::EvalWindows> val;          // when data.val is set and asked for
  torch::Tensor token_bytes;                       // [model.vocab_size] int64, undefined without a tokenizer

  // Scores the whole held-out pass (eval.batches caps it) each call; empty when there is no val set.
  eval::Evaluator evaluator();
};

// Opens what a run needs (cfg.model.vocab_size must be resolved): the train loader (seeded by run.seed,
// batches of train.batch_size on `device`) when with_train, the held-out windows (eval.batch_size,
// eval.batches) when with_val and data.val is not "". Checks the shards' vocabulary against the model.
// Data parallel: rank r of `world` takes the train loader's windows r, r+world, ... and the held-out
// batches r, r+world, ... (see data/loader.h); the trainer sums the ranks' evaluations.
LmData open_lm_data(const RunConfig& cfg, const torch::Device& device, bool with_train, bool with_val,
                    int64_t rank = 0, int64_t world = 1);

}  // namespace subq::train
