// run_data.h — what `subq train` feeds the trainer, by data.task: the training BatchSource and the
// periodic evaluation. One dispatch point, so the trainer and the apps stay task-agnostic:
//   code       lm_data.h: the shard loader over data.train and the held-out pass over data.val (no
//              evaluation when data.val is "");
//   synthetic  data/synthetic.h: the on-the-fly task source (seeded by run.seed) and the accuracy
//              evaluation at data.synthetic.train_eval_lens (eval/synthetic_eval.h); no files are read.
// cfg.model.vocab_size must be resolved first (resolve_vocab_size).
//
// Example:
//   subq::train::resolve_vocab_size(cfg);
//   auto d = subq::train::open_run_data(cfg, device, /*with_train=*/true, /*with_eval=*/true);
//   subq::train::train(cfg, run_dir, {d.train, d.evaluator});
#pragma once

#include <memory>
#include <string>

#include <torch/types.h>

#include "subq/core/run_config.h"
#include "subq/data/batch.h"
#include "subq/data/synthetic.h"
#include "subq/eval/lm_eval.h"
#include "subq/train/lm_data.h"

namespace subq::train {

struct RunData {
  data::BatchSource* train = nullptr;  // owned by `lm` or `synthetic` below; null without with_train
  eval::Evaluator evaluator;           // empty when there is nothing to evaluate on
  std::string eval_what;               // what the evaluation scores, for the log ("" = no evaluation)

  LmData lm;                                       // data.task = code
  std::unique_ptr<data::SyntheticSource> synthetic;  // data.task = synthetic
};

// Data parallel (rank of world): code partitions the shards' windows and held-out batches by rank
// (lm_data.h); synthetic splits one training stream (seed run.seed) by rank — rank r of w takes global
// examples r, r + w, ..., so the ranks' examples are disjoint, together they are the single-process
// stream, and every rank resumes its own share from rank 0's cursor (also on another number of ranks) —
// and has every rank score the same full evaluation sets (the trainer's sum over ranks keeps every ratio).
RunData open_run_data(const RunConfig& cfg, const torch::Device& device, bool with_train, bool with_eval,
                      int64_t rank = 0, int64_t world = 1);

}  // namespace subq::train
